"""Weight banding (METHODS §6): how much of a layer's kernel structure runs in horizontal
versus vertical bands.

Each unit's map (an NMF-RGB map, or a kernel per input channel) is split the way a two-way
analysis of variance splits a table: the spread of its row means (structure constant along
each row: horizontal bands), of its column means (vertical bands), and the rest. A unit's
horizontal share is its row part over its whole spread, summed over channels; the layer's
banding score is the mean over units of horizontal minus vertical share: +1 when every map is
made of horizontal bands, -1 of vertical ones (the 90-degree-rotation experiment), and near 0
for maps with no banding. Independent noise gives both shares (kh-1)/(kh*kw-1): the baseline.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Banding:
    """Horizontal and vertical shares of each unit's map structure, and the layer's score."""

    horizontal: np.ndarray  # (N,): share of each unit's spread in its row means
    vertical: np.ndarray  # (N,): share in its column means
    counted: np.ndarray  # (N,) bool: units with any spread (flat maps have no direction)
    baseline: float  # either share for maps of independent noise

    @property
    def score(self) -> float | None:
        """Mean over units of horizontal minus vertical share, in [-1, 1]."""
        if not self.counted.any():
            return None
        return float(np.mean(self.horizontal[self.counted] - self.vertical[self.counted]))


def banding(maps: np.ndarray) -> Banding:
    """Banding of ``maps`` (N, kh, kw, C): N units, a kh x kw map per channel."""
    n, kh, kw, _ = maps.shape
    if kh * kw < 4 or min(kh, kw) < 2:
        raise ValueError(f"{kh}x{kw} maps have no rows and columns to compare")
    x = maps.astype(np.float64)
    centred = x - x.mean(axis=(1, 2), keepdims=True)  # (N, kh, kw, C)
    total = (centred**2).sum(axis=(1, 2, 3))  # (N,)
    rows = kw * (centred.mean(axis=2) ** 2).sum(axis=(1, 2))  # row means: (N, kh, C)
    cols = kh * (centred.mean(axis=1) ** 2).sum(axis=(1, 2))  # column means: (N, kw, C)
    counted = total > 1e-12 * max(float(total.max(initial=0.0)), 1e-30)
    safe = np.where(counted, total, 1.0)
    return Banding(
        horizontal=np.where(counted, rows / safe, 0.0),
        vertical=np.where(counted, cols / safe, 0.0),
        counted=counted,
        baseline=(kh - 1) / (kh * kw - 1),
    )
