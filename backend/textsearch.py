"""Zero-shot neuron search in the web process: numpy (and faiss for large indexes), no torch.

A worker precomputes, per model, an index (``search_index`` artifact, .npz): every unit's
text vector and the embeddings of a vocabulary (class names, prompts, dictionary words) in the
same space. A query is embedded here by composing vocabulary entries — the whole query when it
is a known phrase, else the mean of its known words — so answering needs one matrix-vector
product (about a millisecond for 20k units) and no text encoder in the web process. Indexes of
``backend.vecindex.LARGE`` units or more get a faiss index when loaded, so a query reads a
few percent of them at about half the memory (``backend/vecindex.py``).

A query can also be composed from units: a sparse non-negative combination of unit text
vectors that approximates the query's vector (L1 regression, as for the emotion neurons).
"""

from __future__ import annotations

import io
import re
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from backend.storage import ObjectStore
from backend.vecindex import Vectors, vector_store

_WORD = re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*")

# Composition: candidates are the units closest to the query; the L1 penalty runs down a
# geometric path from where the first unit enters to ALPHA_FLOOR of that, and the least
# penalty that keeps at most max_units units is taken (20k units of 512 dimensions: ~25 ms a
# query, measured on a busy 2-core machine).
CANDIDATES = 200
MAX_UNITS = 8
ALPHA_STEPS = 24
ALPHA_FLOOR = 1e-3


@dataclass
class Hit:
    layer: str
    unit: int
    score: float


@dataclass
class Term:
    layer: str
    unit: int
    weight: float


@dataclass
class Composition:
    """``query ≈ sum(weight * unit vector)`` over ``terms``; ``cosine`` says how well."""

    terms: list[Term]  # largest weight first
    cosine: float
    used: list[str]


class TextIndex:
    """Unit vectors and vocabulary embeddings of one model."""

    def __init__(self, data: dict[str, np.ndarray]) -> None:
        self.layers = [str(x) for x in data["layer_names"]]
        self.unit_layer = data["unit_layer"].astype(np.int32)  # (U,)
        self.unit_index = data["unit_index"].astype(np.int32)  # (U,)
        self.vectors: Vectors = vector_store(data["unit_vecs"])  # (U, D), rows normalised
        self.vocab = [str(x) for x in data["vocab"]]
        self.vocab_vecs = data["vocab_vecs"].astype(np.float32)  # (V, D), rows normalised
        self.lookup = {v.lower(): i for i, v in enumerate(self.vocab)}

    @property
    def unit_vecs(self) -> np.ndarray:
        """Every unit's vector (U, D) as float32 (reconstructed when quantised)."""
        return self.vectors.rows(np.arange(len(self.vectors)))

    def _layer_rows(self, layer: str | None) -> np.ndarray | None:
        """The rows of ``layer`` (a layer of the index), or None for all rows."""
        if layer is None:
            return None
        return np.flatnonzero(self.unit_layer == self.layers.index(layer))

    @property
    def nbytes(self) -> int:
        """Memory held by the unit vectors and the vocabulary."""
        return self.vectors.nbytes + int(self.vocab_vecs.nbytes)

    @classmethod
    def from_bytes(cls, blob: bytes) -> TextIndex:
        with np.load(io.BytesIO(blob), allow_pickle=False) as z:
            return cls({k: z[k] for k in z.files})

    def embed(self, query: str) -> tuple[np.ndarray | None, list[str]]:
        """The query's vector and the vocabulary entries it was composed from."""
        q = " ".join(query.lower().split())
        if q in self.lookup:
            return self.vocab_vecs[self.lookup[q]], [self.vocab[self.lookup[q]]]
        used = [w for w in _WORD.findall(q) if w in self.lookup]
        if not used:
            return None, []
        v = self.vocab_vecs[[self.lookup[w] for w in used]].mean(axis=0)
        n = float(np.linalg.norm(v))
        return (v / n if n > 0 else v), used

    def search(
        self, query: str, top: int = 30, layer: str | None = None
    ) -> tuple[list[Hit], list[str]]:
        """Units ranked by cosine between their text vector and the query."""
        vec, used = self.embed(query)
        if vec is None:
            return [], []
        if layer is not None and layer not in self.layers:
            return [], used
        idx, scores = self.vectors.top(vec, top, self._layer_rows(layer))
        hits = [
            Hit(self.layers[self.unit_layer[i]], int(self.unit_index[i]), float(score))
            for i, score in zip(idx, scores, strict=True)
        ]
        return hits, used

    def compose(
        self,
        query: str,
        layer: str | None = None,
        *,
        max_units: int = MAX_UNITS,
        candidates: int = CANDIDATES,
    ) -> Composition | None:
        """The query's vector as a sparse non-negative combination of unit text vectors
        (Lasso, positive weights), among the ``candidates`` units closest to it; None when
        no vocabulary entry composes the query or ``layer`` is not in the index."""
        vec, used = self.embed(query)
        if vec is None:
            return None
        if layer is not None and layer not in self.layers:
            return None
        cand, _ = self.vectors.top(vec, candidates, self._layer_rows(layer))
        if cand.size == 0:
            return None
        x = np.asfortranarray(self.vectors.rows(cand).T, dtype=np.float64)  # (D, k)
        y = vec.astype(np.float64)  # (D,)
        weights = sparse_nonnegative(x, y, max_units)  # (k,)
        keep = np.flatnonzero(weights > 0)
        if keep.size == 0:  # no candidate points towards the query
            return Composition([], 0.0, used)
        recon = x[:, keep] @ weights[keep]  # (D,)
        norm = float(np.linalg.norm(recon) * np.linalg.norm(y))
        cosine = float(recon @ y) / norm if norm > 0 else 0.0
        order = keep[np.argsort(-weights[keep], kind="stable")]
        terms = [
            Term(
                self.layers[self.unit_layer[cand[j]]],
                int(self.unit_index[cand[j]]),
                float(weights[j]),
            )
            for j in order
        ]
        return Composition(terms, cosine, used)


def sparse_nonnegative(x: np.ndarray, y: np.ndarray, max_units: int) -> np.ndarray:
    """Non-negative weights w (at most ``max_units`` non-zero) with x @ w ≈ y.

    x (D, k), y (D,). The support comes from the Lasso path; the weights are then refitted
    by non-negative least squares on it, so they are not shrunk by the penalty."""
    # Imported here: scikit-learn takes a second to import, and only this needs it.
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import Lasso, LinearRegression

    n, k = x.shape
    weights = np.zeros(k)
    alpha_max = float((x.T @ y).max()) / n  # below this, the first unit enters
    if alpha_max <= 0:
        return weights
    lasso = Lasso(
        alpha=alpha_max, positive=True, fit_intercept=False, warm_start=True, max_iter=2000
    )
    support = np.zeros(0, dtype=np.int64)
    with warnings.catch_warnings():
        # A penalty step that stops short of full convergence still picks a fine support.
        warnings.simplefilter("ignore", ConvergenceWarning)
        for alpha in alpha_max * np.geomspace(0.9, ALPHA_FLOOR, ALPHA_STEPS):
            lasso.set_params(alpha=alpha)
            lasso.fit(x, y)
            nonzero = np.flatnonzero(lasso.coef_ > 0)
            if nonzero.size > max_units:
                if support.size == 0:  # too many entered at once: the largest of them
                    support = np.argsort(-lasso.coef_, kind="stable")[:max_units]
                break
            support = nonzero
    if support.size == 0:
        return weights
    refit = LinearRegression(positive=True, fit_intercept=False).fit(x[:, support], y)
    weights[support] = refit.coef_
    return weights


# Parsed indexes kept per process, least recently used dropped first: by their size, not their
# count, so a search across many models does not re-read every index from the store.
CACHE_BYTES = 1 << 30
_cache: OrderedDict[tuple[int, str], TextIndex] = OrderedDict()
_cache_lock = threading.Lock()


def load_index(store: ObjectStore, key: str) -> TextIndex:
    """The index under ``key``, parsed once per process (keys change when it is rebuilt)."""
    at = (id(store), key)
    with _cache_lock:
        if at in _cache:
            _cache.move_to_end(at)
            return _cache[at]
    index = TextIndex.from_bytes(store.get(key))  # outside the lock: seconds when large
    with _cache_lock:
        _cache[at] = index
        _cache.move_to_end(at)
        while len(_cache) > 1 and sum(ix.nbytes for ix in _cache.values()) > CACHE_BYTES:
            _cache.popitem(last=False)
    return index
