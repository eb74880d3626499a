"""The units nearest a query vector: exact for small indexes, faiss candidates re-ranked for
large ones.

A search index of a million unit vectors is 1.5 GB of float32 at 384 dimensions and takes one
full scan of it per query. At ``LARGE`` rows and above the web process keeps instead (chosen by
measurement on ``benchmarks/search_scale.py``'s planted data, below):

- every row as int16 codes with a per-row scale (2 bytes a dimension), in row order: the
  re-rank, ``rows`` and the ``among`` path read them (a layer's rows: all of them scored, so
  exact up to the codes' rounding, 1e-6 to 1e-5 on a score);
- a faiss ``IndexIVFPQFastScan`` for the candidates: k-means into about sqrt(U) inverted lists,
  each row's residual as 4-bit product-quantiser codes (a byte per 8 dimensions, scanned with
  SIMD lookup tables); a query scans its nearest eighth of the lists and the best
  ``max(MIN_CANDIDATES, CANDIDATES * k)`` of those rows are re-scored from the int16 codes.

Measured at 1M x 384 (400 queries, half of them two-word phrases, a shared 2-core machine;
200k where said). Every candidate answered in well under 50 ms; recall, memory and
build time decided:

- IVF-PQ fast scan, 400 candidates re-ranked (this): the exact top 10 on 99.25% of queries at
  1,000 lists with 125 probed; through ``TextIndex.search`` p50 5-9 ms, p99 8-22 ms by the
  machine's load (exact: 120-230 ms, 155-330 ms); 0.79 GB, 0.89 GB resident; built in 18-48 s.
  4,000 lists (4 sqrt(U)) gained half a point at 512 probed but took 110 s to build: k-means and
  the assignment grow with the list count. With the float16 re-rank below: 200 candidates lost
  half a point, 64 probes none, 32 probes half a point (an eighth keeps a margin);
- the re-rank rows as float16 instead: 99% with a full scan, the rest swapping a near-tie at the
  tenth place (score gaps under 3e-5, float16 rounds a score by ~1e-5), and numpy converts
  float16 at ~5 ns an element (a 20k-row layer: 50-65 ms, against 13 ms for int16 or float32);
- IVF with float16 codes, no PQ (IndexIVFScalarQuantizer; 200k): 93.5% at 16 of 1,788 lists
  probed, 95.5% at 128 (p99 13 ms): two-word queries have neighbours in many lists, and
  scanning float16 codes is slower than the 4-bit fast scan;
- HNSW over float16 codes (M=16, efConstruction 40; 200k): 56% at efSearch 128;
- int8 codes plus a 16-bit re-rank copy: 3 bytes a dimension, 1.15 GB at 1M: over the 1 GB
  budget, not built.

One OpenMP thread was no faster than two for single queries (interleaved in one process at 1M:
p50 ~5.5 ms either way; faiss parallelises over queries, and a request has one), so the web
process keeps faiss's default (``benchmarks/search_scale.py --threads 1`` measures it again).
"""

from __future__ import annotations

from typing import Any

import numpy as np

LARGE = 100_000  # rows from which the faiss index is built
CANDIDATES = 10  # re-ranked per result asked for (at least MIN_CANDIDATES)
MIN_CANDIDATES = 400
PROBE_SHARE = 8  # a query scans 1/PROBE_SHARE of the inverted lists
KMEANS_ITERS = 10
KMEANS_SAMPLE = 64  # rows per list sampled to train the k-means (faiss warns below 39)
_CHUNK = 65536  # rows quantised at a time while building


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


class FaissVectors:
    """Rows as int16 codes and a faiss IVF-PQ fast-scan index over them (see the module)."""

    def __init__(
        self,
        vecs: np.ndarray,
        *,
        lists: int | None = None,
        probes: int | None = None,
        seed: int = 0,
    ) -> None:
        # Imported here: the web process imports this module whether or not it ever loads a
        # large index.
        import faiss

        u, d = vecs.shape
        self.codes = np.empty((u, d), dtype=np.int16)  # (U, D), row order
        self.scale = np.empty(u, dtype=np.float32)  # (U,): row = codes * scale
        for start in range(0, u, _CHUNK):
            block = np.asarray(vecs[start : start + _CHUNK], dtype=np.float32)
            scale = np.abs(block).max(axis=1) / 32767.0
            scale[scale == 0] = 1.0
            end = start + block.shape[0]
            self.codes[start:end] = np.rint(block / scale[:, None])
            self.scale[start:end] = scale
        nlist = lists or max(16, round(float(np.sqrt(u))))
        self.lists = nlist
        # 4-bit codes of 4 dimensions each (d / 4 of them) where d allows it.
        sub = next(s for s in (4, 2, 1) if d % s == 0)
        index: Any = faiss.IndexIVFPQFastScan(
            faiss.IndexFlatIP(d), d, nlist, d // sub, 4, faiss.METRIC_INNER_PRODUCT
        )
        index.cp.niter = KMEANS_ITERS
        index.cp.seed = seed
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(u, min(u, KMEANS_SAMPLE * nlist), replace=False))
        index.train(np.ascontiguousarray(vecs[sample], dtype=np.float32))
        for start in range(0, u, 4 * _CHUNK):  # bounded float32 copies when vecs is not
            index.add(np.ascontiguousarray(vecs[start : start + 4 * _CHUNK], dtype=np.float32))
        index.nprobe = probes or max(1, nlist // PROBE_SHARE)
        self.index = index
        self.probes = int(index.nprobe)
        # The lists as faiss holds them for fast scan: its stubs know only the base class.
        lists_mem: Any = faiss.downcast_InvertedLists(index.invlists)
        sizes = np.array([lists_mem.list_size(i) for i in range(nlist)], dtype=np.int64)
        per = int(lists_mem.n_per_block)
        # Codes in blocks of n_per_block rows, an int64 id per row, float32 centroids.
        self._faiss_bytes = int(
            (-(-sizes // per)).sum() * lists_mem.block_size + 8 * u + 4 * nlist * d
        )

    def __len__(self) -> int:
        return int(self.codes.shape[0])

    @property
    def nbytes(self) -> int:
        return int(self.codes.nbytes + self.scale.nbytes) + self._faiss_bytes

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Float32 vectors of rows ``ids`` (from their 16-bit codes): (len(ids), D)."""
        return self.codes[ids].astype(np.float32) * self.scale[ids, None]

    def _scores(self, ids: np.ndarray, q: np.ndarray) -> np.ndarray:
        """``row @ q`` of rows ``ids`` from their 16-bit codes: the scale once per row."""
        return (self.codes[ids].astype(np.float32) @ q) * self.scale[ids]

    def top(
        self,
        q: np.ndarray,
        k: int,
        among: np.ndarray | None = None,
        *,
        refine: bool = True,
    ) -> tuple[np.ndarray, np.ndarray]:
        """As ``ExactVectors.top``. Without ``among``: faiss's best candidates from the query's
        nearest lists, re-scored from the int16 codes (``refine=False``: faiss's own top ``k``
        and approximate scores, for the benchmark). With ``among`` (a layer's rows): all of
        them scored from the int16 codes."""
        q = np.asarray(q, dtype=np.float32)
        if among is not None:
            scores = self._scores(among, q)
            best = top_k(scores, k)
            return among[best], scores[best]
        n = k if not refine else max(MIN_CANDIDATES, CANDIDATES * k)
        approx, cand = self.index.search(q[None], min(n, len(self)))
        found = cand[0] >= 0  # -1: fewer rows in the probed lists than asked for
        if not refine:
            return cand[0][found][:k], approx[0][found][:k]
        cand = cand[0][found]
        scores = self._scores(cand, q)
        best = top_k(scores, k)
        return cand[best], scores[best]


Vectors = ExactVectors | FaissVectors


def vector_store(vecs: np.ndarray) -> Vectors:
    """Exact below ``LARGE`` rows, else faiss candidates re-ranked from int16 codes."""
    if vecs.shape[0] < LARGE:
        return ExactVectors(vecs)
    return FaissVectors(vecs)
