"""Neuron families from unit text vectors, and sparse concept composition over units."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

UnitKey = tuple[str, int]  # (layer, unit)


@dataclass
class FamilyProposal:
    """A cluster of units with similar text vectors, named from its nearest vocabulary strings."""

    name: str
    words: list[str]
    members: list[UnitKey]  # nearest the centroid first


def _normalised(x: torch.Tensor | np.ndarray) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    return a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)


def distinct_strings(vocab: Sequence[str], ranked: Sequence[int], n: int) -> list[int]:
    """The first ``n`` of ``ranked`` (indices into vocab) that repeat no earlier pick: a
    string containing a picked one as whole words, or contained in one, is skipped (so
    'ladybug' is not followed by 'a photo of a ladybug')."""
    picked: list[int] = []
    for j in ranked:
        words = f" {vocab[j].lower()} "
        if not any(
            f" {vocab[i].lower()} " in words or words in f" {vocab[i].lower()} " for i in picked
        ):
            picked.append(int(j))
            if len(picked) == n:
                break
    return picked


def propose_families(
    vectors: torch.Tensor | np.ndarray,
    keys: Sequence[UnitKey],
    vocab_emb: torch.Tensor | np.ndarray,
    vocab: Sequence[str],
    k_range: tuple[int, int] = (4, 20),
    n_words: int = 3,
    seed: int = 0,
) -> list[FamilyProposal]:
    """K-means on normalised unit vectors (U, D), k in k_range by silhouette; largest first."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    x = _normalised(vectors)  # (U, D)
    lo, hi = k_range
    hi = min(hi, len(x) - 1)
    if hi < 2:
        raise ValueError("too few units to cluster")
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for k in range(max(2, lo), hi + 1):
        km = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(x)
        if len(set(km.labels_.tolist())) < 2:
            continue
        # Sampled silhouette: the full one is quadratic in the number of units.
        s = silhouette_score(
            x, km.labels_, metric="cosine", sample_size=min(len(x), 2000), random_state=seed
        )
        if best is None or s > best[0]:
            best = (float(s), km.labels_, km.cluster_centers_)
    if best is None:
        raise ValueError("no clustering found")
    _, labels, centres = best
    v = _normalised(vocab_emb)  # (V, D)
    out = []
    for c in range(len(centres)):
        idx = np.flatnonzero(labels == c)
        if len(idx) == 0:
            continue
        centre = _normalised(centres[c])  # (D,)
        near = distinct_strings(vocab, np.argsort(-(v @ centre), kind="stable").tolist(), n_words)
        order = idx[np.argsort(-(x[idx] @ centre), kind="stable")]
        words = [vocab[j] for j in near]
        out.append(FamilyProposal(", ".join(words), words, [keys[i] for i in order]))
    out.sort(key=lambda f: -len(f.members))
    return out


def compose(
    concept: torch.Tensor | np.ndarray,
    vectors: torch.Tensor | np.ndarray,
    keys: Sequence[UnitKey],
    alpha: float = 0.01,
    top: int = 20,
) -> list[tuple[float, str, int]]:
    """Sparse (Lasso) weights of units whose vectors (U, D) sum to the concept vector (D,)."""
    from sklearn.linear_model import Lasso

    x = _normalised(vectors).T  # (D, U): one column per unit
    y = np.asarray(concept, dtype=np.float64).reshape(-1)  # (D,)
    y = y / max(float(np.linalg.norm(y)), 1e-12)
    model = Lasso(alpha=alpha, fit_intercept=False, max_iter=10000).fit(x, y)
    w = model.coef_  # (U,)
    nz = np.flatnonzero(w)
    nz = nz[np.lexsort((nz, -np.abs(w[nz])))][:top]
    return [(float(w[i]), *keys[i]) for i in nz.tolist()]
