"""The units nearest a query vector, numpy only: exact for small indexes, approximate-then-
refined for large ones.

A search index of a million unit vectors is 1.5 GB of float32 at 384 dimensions and takes one
full scan of it per query. At ``LARGE`` rows and above the web process keeps instead (chosen by
``benchmarks/search_scale.py``):

- an inverted file: spherical k-means centroids (about sqrt(U)/4 of them), the rows sorted by
  their nearest centroid, so a query scans only the rows of its nearest clusters (an eighth);
- each row as int8 codes with a per-row scale, scanned to pick candidates;
- each row's quantisation residual as int8 too, so the candidates are re-ranked with 16-bit
  precision (score error ~1e-6, well under the gaps between neighbouring units' scores;
  int8 alone reorders near-ties and changes the top-10 of a third of queries).

Two bytes a dimension instead of four. Measured at 1M planted units (benchmarks/search_scale.py):
the same top 10 as exact search on 99% of queries in 0.82 GB instead of 1.46 GB, but slower
than the float32 scan: k-means leaves a few clusters holding most rows, and numpy converts
int8 to float32 at about a nanosecond an element. Splitting those clusters made queries
faster than exact but found the exact top 10 on only 58% of them (an eighth of the rows read).
"""

from __future__ import annotations

import numpy as np

LARGE = 100_000  # rows from which an index is clustered and quantised
PROBES = 8  # clusters scanned per query, at least; an eighth of them for large K
CANDIDATES = 10  # re-ranked per result asked for (at least MIN_CANDIDATES)
MIN_CANDIDATES = 200
KMEANS_ITERS = 10
KMEANS_SAMPLE = 64  # rows per centroid sampled to train the k-means
_CHUNK = 65536  # rows per matrix product while building


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` largest scores, largest first (ties keep their order)."""
    k = min(k, scores.shape[0])
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    idx = np.argpartition(-scores, k - 1)[:k]
    return idx[np.argsort(-scores[idx], kind="stable")]


class ExactVectors:
    """Float32 rows, scanned in full: exact."""

    def __init__(self, vecs: np.ndarray) -> None:
        self.vecs = np.ascontiguousarray(vecs, dtype=np.float32)  # (U, D)

    def __len__(self) -> int:
        return int(self.vecs.shape[0])

    @property
    def nbytes(self) -> int:
        return int(self.vecs.nbytes)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Float32 vectors of rows ``ids``: (len(ids), D)."""
        return self.vecs[ids]

    def top(
        self, q: np.ndarray, k: int, among: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Row ids of the ``k`` rows with the highest ``row @ q`` (only rows ``among`` when
        given), best first, and their scores."""
        if among is None:
            scores = self.vecs @ q  # (U,)
            best = top_k(scores, k)
            return best, scores[best]
        scores = self.vecs[among] @ q  # (len(among),)
        best = top_k(scores, k)
        return among[best], scores[best]


class QuantisedVectors:
    """An inverted file over int8 rows, re-ranked with 16-bit precision (see the module)."""

    def __init__(
        self,
        vecs: np.ndarray,
        *,
        clusters: int | None = None,
        probes: int = PROBES,
        seed: int = 0,
    ) -> None:
        u, d = vecs.shape
        rng = np.random.default_rng(seed)
        k = clusters or max(16, round(float(np.sqrt(u)) / 4))
        # Recall falls with the share of rows scanned, so it stays about an eighth: the
        # queries between concepts (two-word phrases) have neighbours in several clusters.
        self.probes = min(k, max(probes, k // 8))
        self.centroids = _spherical_kmeans(vecs, k, rng)  # (K, D)
        assign = _nearest(vecs, self.centroids)  # (U,)
        order = np.argsort(assign, kind="stable")
        self.order = order.astype(np.int32)  # position -> row id
        self.position = np.empty(u, dtype=np.int32)  # row id -> position
        self.position[order] = np.arange(u, dtype=np.int32)
        self.offsets = np.concatenate([[0], np.cumsum(np.bincount(assign, minlength=k))])
        self.codes = np.empty((u, d), dtype=np.int8)  # coarse, scanned
        self.fine = np.empty((u, d), dtype=np.int8)  # residual, for re-ranking
        self.scale = np.empty(u, dtype=np.float32)
        for start in range(0, u, _CHUNK):
            block = np.asarray(vecs[order[start : start + _CHUNK]], dtype=np.float32)
            c, f, s = _quantise(block)
            end = start + block.shape[0]
            self.codes[start:end], self.fine[start:end], self.scale[start:end] = c, f, s

    def __len__(self) -> int:
        return int(self.codes.shape[0])

    @property
    def nbytes(self) -> int:
        arrays = (self.centroids, self.order, self.position, self.offsets)
        return int(sum(a.nbytes for a in arrays) + self.codes.nbytes * 2 + self.scale.nbytes)

    def _refined(self, positions: np.ndarray) -> np.ndarray:
        """16-bit reconstructions of the rows at ``positions``: (n, D) float32."""
        coarse = self.codes[positions].astype(np.float32)
        coarse += self.fine[positions].astype(np.float32) * (1.0 / 254.0)
        coarse *= self.scale[positions, None]
        return coarse

    def rows(self, ids: np.ndarray) -> np.ndarray:
        return self._refined(self.position[ids])

    def top(
        self,
        q: np.ndarray,
        k: int,
        among: np.ndarray | None = None,
        *,
        refine: bool = True,
    ) -> tuple[np.ndarray, np.ndarray]:
        """As ``ExactVectors.top``. Without ``among``: the rows of the query's nearest clusters,
        by int8 score, the best candidates re-ranked at 16 bits (``refine=False``: not
        re-ranked, for the benchmark). With ``among`` (a layer's rows): all of them at 16 bits."""
        q = np.asarray(q, dtype=np.float32)
        if among is not None:
            pos = self.position[among]
            scores = self._refined(pos) @ q
            best = top_k(scores, k)
            return among[best], scores[best]
        probe = top_k(self.centroids @ q, self.probes)
        positions = np.concatenate([np.arange(self.offsets[c], self.offsets[c + 1]) for c in probe])
        # One gather and one product: each BLAS call costs a thread hand-off, which on a busy
        # machine can take longer than the product itself.
        block = np.concatenate([self.codes[self.offsets[c] : self.offsets[c + 1]] for c in probe])
        coarse = (block.astype(np.float32) @ q) * self.scale[positions]
        if not refine:
            best = top_k(coarse, k)
            return self.order[positions[best]].astype(np.int64), coarse[best]
        cand = positions[top_k(coarse, max(MIN_CANDIDATES, CANDIDATES * k))]
        scores = self._refined(cand) @ q
        best = top_k(scores, k)
        return self.order[cand[best]].astype(np.int64), scores[best]


Vectors = ExactVectors | QuantisedVectors


def vector_store(vecs: np.ndarray) -> Vectors:
    """Exact below ``LARGE`` rows, else clustered and quantised."""
    if vecs.shape[0] < LARGE:
        return ExactVectors(vecs)
    return QuantisedVectors(vecs)


def _quantise(block: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-row int8 codes, int8 residual codes (in units of scale / 254) and scales."""
    scale = np.abs(block).max(axis=1) / 127.0  # (n,)
    scale[scale == 0] = 1.0
    coarse = np.rint(block / scale[:, None])  # in [-127, 127]
    residual = block / scale[:, None] - coarse  # in [-0.5, 0.5]
    fine = np.clip(np.rint(residual * 254.0), -127, 127)
    return coarse.astype(np.int8), fine.astype(np.int8), scale.astype(np.float32)


def _nearest(vecs: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of each row's most similar centroid (cosine: both are normalised)."""
    out = np.empty(vecs.shape[0], dtype=np.int64)
    for start in range(0, vecs.shape[0], _CHUNK):
        block = np.asarray(vecs[start : start + _CHUNK], dtype=np.float32)
        out[start : start + block.shape[0]] = np.argmax(block @ centroids.T, axis=1)
    return out


def _spherical_kmeans(vecs: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """K normalised centroids trained on a sample of the rows (Lloyd's iterations)."""
    n = vecs.shape[0]
    sample = np.asarray(
        vecs[np.sort(rng.choice(n, min(n, KMEANS_SAMPLE * k), replace=False))], np.float32
    )
    centroids = sample[rng.choice(sample.shape[0], k, replace=False)].copy()
    for _ in range(KMEANS_ITERS):
        assign = _nearest(sample, centroids)
        sums = np.zeros_like(centroids)
        np.add.at(sums, assign, sample)
        empty = np.bincount(assign, minlength=k) == 0
        # An empty cluster restarts at a random row rather than staying dead.
        sums[empty] = sample[rng.choice(sample.shape[0], int(empty.sum()))]
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        centroids = (sums / np.where(norms > 0, norms, 1.0)).astype(np.float32)
    return centroids
