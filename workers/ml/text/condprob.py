"""Conditional probability plots (the CLIP article's view of a unit across its whole range).

Split [min, max] of a unit's activation over the dataset into uniform buckets, sample up to a
fixed number of images per bucket, and give the share of each category among them; the x-axis
is in standard deviations from the unit's mean. Categories are the text head's zero-shot
classes over a concept list (``evidence.concept_match``, argmax per image).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _sample_order(ids: np.ndarray, salt: int) -> np.ndarray:
    """A fixed pseudo-random order of image ids (the same sample on every run)."""
    h = (np.asarray(ids, dtype=np.uint64) + np.uint64(salt)) * _GOLDEN
    return np.argsort(h ^ (h >> np.uint64(29)), kind="stable")


def condprob(
    acts: np.ndarray,
    categories: np.ndarray,
    concepts: Sequence[str],
    ids: np.ndarray,
    *,
    buckets: int,
    per_bucket: int,
) -> dict[str, Any]:
    """One unit's plot: acts (N,) its activation per image, categories (N,) each image's
    category (an index into ``concepts``), ids (N,) the images' ids.

    Returns JSON-ready {concepts, edges (B + 1), x_std (B,) bucket centres in standard
    deviations, totals (B,) images per bucket, sampled (B,), shares (B, C) each row summing to
    one (zeros for an empty bucket), samples (B, <=per_bucket) image ids, mean, std}.
    """
    a = np.asarray(acts, dtype=np.float64)
    lo, hi = float(a.min()), float(a.max())
    mean, std = float(a.mean()), float(a.std())
    edges = np.linspace(lo, hi, buckets + 1)
    # Uniform buckets; the maximum falls in the last one.
    which = np.clip(np.searchsorted(edges, a, side="right") - 1, 0, buckets - 1)  # (N,)
    if hi == lo:
        which[:] = 0
    order = _sample_order(ids, salt=len(a))
    shares = np.zeros((buckets, len(concepts)))
    totals, sampled, samples = [], [], []
    for b in range(buckets):
        members = order[which[order] == b][:per_bucket]  # (<=P,) rows, in the fixed order
        totals.append(int((which == b).sum()))
        sampled.append(len(members))
        samples.append([int(i) for i in np.asarray(ids)[members]])
        if len(members):
            counts = np.bincount(categories[members], minlength=len(concepts))
            shares[b] = counts / len(members)
    centres = (edges[:-1] + edges[1:]) / 2
    x_std = (centres - mean) / std if std > 0 else np.zeros(buckets)
    return {
        "concepts": list(concepts),
        "edges": [round(float(e), 6) for e in edges],
        "x_std": [round(float(x), 4) for x in x_std],
        "totals": totals,
        "sampled": sampled,
        "shares": [[round(float(s), 6) for s in row] for row in shares],
        "samples": samples,
        "mean": mean,
        "std": std,
    }
