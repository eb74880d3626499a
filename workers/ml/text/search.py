"""Zero-shot neuron search: one normalised matrix of unit vectors, one matmul per query."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch


class SearchIndex:
    """Units of several layers ranked by cosine between their vectors and a query vector."""

    def __init__(self, vectors: Mapping[str, torch.Tensor | np.ndarray]) -> None:
        if not vectors:
            raise ValueError("an index needs at least one layer")
        mats = [np.asarray(v, dtype=np.float32) for v in vectors.values()]
        dims = {m.shape[1] for m in mats}
        if len(dims) != 1:
            raise ValueError(f"layers disagree on the vector dimension: {sorted(dims)}")
        self.layers = list(vectors)
        self.counts = np.array([m.shape[0] for m in mats], dtype=np.int64)  # (L,)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)
        matrix = np.concatenate(mats, axis=0)  # (N_units, D)
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)  # (N_units, 1)
        # A zero vector (a dead unit) scores 0 for every query instead of NaN.
        self.matrix = np.ascontiguousarray(matrix / np.maximum(norms, 1e-12), dtype=np.float32)
        self.layer_of = np.repeat(np.arange(len(mats)), self.counts)  # (N_units,)
        self.unit_of = np.arange(len(self.matrix)) - self.starts[self.layer_of]  # (N_units,)

    @property
    def dim(self) -> int:
        """Vector dimension D."""
        return int(self.matrix.shape[1])

    def __len__(self) -> int:
        return int(self.matrix.shape[0])

    def scores(self, query: torch.Tensor | np.ndarray) -> np.ndarray:
        """(N_units,) cosine of every unit with the query (D,)."""
        q = np.asarray(query, dtype=np.float32).reshape(-1)  # (D,)
        if q.shape[0] != self.dim:
            raise ValueError(f"query has dimension {q.shape[0]}, the index {self.dim}")
        q = q / max(float(np.linalg.norm(q)), 1e-12)
        return self.matrix @ q  # (N_units, D) @ (D,) -> (N_units,)

    def query(
        self, query: torch.Tensor | np.ndarray, top: int = 50, layer: str | None = None
    ) -> list[tuple[str, int, float]]:
        """The ``top`` units (layer, unit, score) most aligned with the query, best first."""
        s = self.scores(query)
        lo, hi = 0, len(s)
        if layer is not None:
            li = self.layers.index(layer)  # ValueError for an unknown layer
            lo, hi = int(self.starts[li]), int(self.starts[li] + self.counts[li])
        part = s[lo:hi]
        n = min(top, len(part))
        if n <= 0:
            return []
        idx = np.argpartition(-part, n - 1)[:n]
        # Ties broken by position so results are the same on every run.
        idx = idx[np.lexsort((idx, -part[idx]))] + lo
        return [(self.layers[self.layer_of[i]], int(self.unit_of[i]), float(s[i])) for i in idx]

    def save(self, path: Path) -> None:
        """Write the index as one .npz (layer names, unit counts, the normalised matrix)."""
        with open(path, "wb") as f:
            np.savez(
                f,
                layers=np.array(self.layers, dtype=np.str_),
                counts=self.counts,
                matrix=self.matrix,
            )

    @classmethod
    def load(cls, path: Path) -> SearchIndex:
        """Read an index written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as z:
            layers = [str(x) for x in z["layers"]]
            counts = z["counts"]
            matrix = z["matrix"]
        ends = np.cumsum(counts)
        parts = np.split(matrix, ends[:-1])
        index = cls(dict(zip(layers, parts, strict=True)))
        # Already normalised: keep the saved bits so scores are identical after a round trip.
        index.matrix = np.ascontiguousarray(matrix, dtype=np.float32)
        return index
