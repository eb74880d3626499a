"""The finalized dataset examples of one layer (``LayerReducer.finalize`` in
``workers/ml/mining.py``), each unit's artifact cut from them, and the strata and histogram
finalizing computes from a reducer's sketch."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from contracts.artifacts import DatasetExamples, Example, Histogram, Stratum, UnitStats
from workers.ml.keys import make_keys


@dataclass
class LayerResult:
    """Finalized dataset examples of one layer; unit i is row i of every tensor.

    Padding: ids -1 and scores NaN where fewer images exist than slots.
    """

    grid: tuple[int, int]  # (H, W) of the unit maps
    count: int  # images seen
    top_ids: torch.Tensor  # (U, k) int64, best first
    top_scores: torch.Tensor  # (U, k) float32, the unit's max over positions
    top_y: torch.Tensor  # (U, k) int64 argmax row in the unit map
    top_x: torch.Tensor  # (U, k) int64 argmax column
    neg_ids: torch.Tensor | None  # (U, k) most negative min first; None if never negative
    neg_scores: torch.Tensor | None
    neg_y: torch.Tensor | None
    neg_x: torch.Tensor | None
    strata_ids: torch.Tensor  # (U, S, P) int64, stratum 0 = lowest quantile of max scores
    strata_scores: torch.Tensor  # (U, S, P) float32
    strata_edges: torch.Tensor  # (U, S + 1) float32, score at each stratum boundary
    hist_counts: torch.Tensor  # (U, B) int64, sketch images per bin
    hist_lo: torch.Tensor  # (U,) float32, left edge of bin 0
    hist_hi: torch.Tensor  # (U,) float32, right edge of the last bin
    mean: torch.Tensor  # (U,) float64, of per-image max scores
    std: torch.Tensor  # (U,) float64, population std of per-image max scores
    active_share: torch.Tensor  # (U,) float64, share of images with max > 0
    min: torch.Tensor  # (U,) float32, global min over images and positions
    max: torch.Tensor  # (U,) float32, global max over images and positions
    # Kept while mining (LayerReducer maps=m): the unit's map (H, W) on its first m top and
    # negative examples, row j that of example j; None when not kept.
    top_maps: torch.Tensor | None = None  # (U, m, H, W) float16
    neg_maps: torch.Tensor | None = None  # (U, m, H, W) float16; None if never negative

    @property
    def unit_count(self) -> int:
        return int(self.top_ids.shape[0])

    def unit(self, index: int) -> DatasetExamples:
        """One unit's examples, strata, histogram and moments, as its artifact stores them."""

        def examples(
            ids: torch.Tensor, scores: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor
        ) -> list[Example]:
            keep = ids[index] >= 0
            return [
                Example(image_id=int(i), score=float(s), y=int(y), x=int(x))
                for i, s, y, x in zip(
                    ids[index][keep].tolist(),
                    scores[index][keep].tolist(),
                    ys[index][keep].tolist(),
                    xs[index][keep].tolist(),
                    strict=True,
                )
            ]

        negative = None
        if self.neg_ids is not None:
            assert self.neg_scores is not None
            assert self.neg_y is not None
            assert self.neg_x is not None
            negative = examples(self.neg_ids, self.neg_scores, self.neg_y, self.neg_x)
        strata = []
        for s in range(self.strata_ids.shape[1]):
            keep = self.strata_ids[index, s] >= 0
            strata.append(
                Stratum(
                    lo=float(self.strata_edges[index, s]),
                    hi=float(self.strata_edges[index, s + 1]),
                    image_ids=self.strata_ids[index, s][keep].tolist(),
                    scores=self.strata_scores[index, s][keep].tolist(),
                )
            )
        return DatasetExamples(
            top=examples(self.top_ids, self.top_scores, self.top_y, self.top_x),
            negative=negative,
            strata=strata,
            histogram=Histogram(
                lo=float(self.hist_lo[index]),
                hi=float(self.hist_hi[index]),
                counts=self.hist_counts[index].tolist(),
            ),
            stats=UnitStats(
                count=self.count,
                mean=float(self.mean[index]),
                std=float(self.std[index]),
                active_share=float(self.active_share[index]),
                min=float(self.min[index]),
                max=float(self.max[index]),
            ),
        )


# Finalizing a reducer's sketch (LayerReducer.finalize): quantile strata and histograms.


def sorted_sketch(scores: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sketch entries per unit in ascending score order (ties: larger id first)."""
    keys = make_keys(scores, ids[None, :])  # (U, R)
    order = torch.argsort(keys, dim=1)  # ascending key = ascending score; unique keys
    return torch.gather(scores, 1, order), ids[order]  # (U, R) each


def strata(
    scores: torch.Tensor, ids: torch.Tensor, n_strata: int, per_stratum: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split each unit's sketch into equal-count quantile strata and pick evenly spaced images."""
    u, r = scores.shape
    s_sorted, i_sorted = sorted_sketch(scores, ids)  # (U, R)
    # Slot indices into the sorted sketch are the same for every unit (same R), so build
    # them once in Python (n_strata x per_stratum numbers) and gather for all units at once.
    slots = torch.full((n_strata, per_stratum), -1, dtype=torch.int64)
    bounds = [(s * r) // n_strata for s in range(n_strata + 1)]
    for s in range(n_strata):
        lo, hi = bounds[s], bounds[s + 1]
        take = min(per_stratum, hi - lo)
        for j in range(take):
            slots[s, j] = lo + (j * (hi - lo)) // take
    slots = slots.to(scores.device).reshape(-1)  # (S * P,)
    valid = slots >= 0
    safe = slots.clamp_min(0)
    out_ids = torch.where(valid, i_sorted[:, safe], -1).reshape(u, n_strata, per_stratum)
    nan = torch.tensor(float("nan"), device=scores.device)
    out_scores = torch.where(valid, s_sorted[:, safe], nan).reshape(u, n_strata, per_stratum)
    # Edge s is the score at the stratum's first slot; the last edge is the sketch max.
    edge_idx = torch.tensor([min(b, r - 1) for b in bounds], device=scores.device)
    edges = s_sorted[:, edge_idx]  # (U, S + 1)
    return out_ids, out_scores, edges


def histogram(scores: torch.Tensor, bins: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Counts of sketch scores in ``bins`` uniform bins over each unit's [min, max]."""
    lo = scores.amin(dim=1)  # (U,)
    hi = scores.amax(dim=1)  # (U,)
    width = (hi - lo).clamp_min(torch.finfo(torch.float32).tiny)  # (U,)
    idx = ((scores - lo[:, None]) / width[:, None] * bins).floor().to(torch.int64)  # (U, R)
    idx = idx.clamp(0, bins - 1)  # the max lands in the last bin
    counts = torch.zeros(scores.shape[0], bins, dtype=torch.int64, device=scores.device)
    counts.scatter_add_(1, idx, torch.ones_like(idx))
    return counts, lo, hi
