"""Zero-shot neuron search in the web process: numpy only, no torch.

A worker precomputes, per model, an index (``search_index`` artifact, .npz): every unit's
text vector and the embeddings of a vocabulary (class names, prompts, dictionary words) in the
same space. A query is embedded here by composing vocabulary entries — the whole query when it
is a known phrase, else the mean of its known words — so answering needs one matrix-vector
product (about a millisecond for 20k units) and no text encoder in the web process.

A query can also be composed from units: a sparse non-negative combination of unit text
vectors that approximates the query's vector (L1 regression, as for the emotion neurons).
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from backend.storage import ObjectStore

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
        self.unit_vecs = data["unit_vecs"].astype(np.float32)  # (U, D), rows normalised
        self.vocab = [str(x) for x in data["vocab"]]
        self.vocab_vecs = data["vocab_vecs"].astype(np.float32)  # (V, D), rows normalised
        self.lookup = {v.lower(): i for i, v in enumerate(self.vocab)}

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
        scores = self.unit_vecs @ vec  # (U,)
        if layer is not None:
            if layer not in self.layers:
                return [], used
            scores = np.where(self.unit_layer == self.layers.index(layer), scores, -np.inf)
        k = min(top, int(np.isfinite(scores).sum()))
        if k <= 0:
            return [], used
        idx = np.argpartition(-scores, k - 1)[:k]
        idx = idx[np.argsort(-scores[idx], kind="stable")]
        hits = [
            Hit(self.layers[self.unit_layer[i]], int(self.unit_index[i]), float(scores[i]))
            for i in idx
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
        scores = self.unit_vecs @ vec  # (U,)
        if layer is not None:
            if layer not in self.layers:
                return None
            scores = np.where(self.unit_layer == self.layers.index(layer), scores, -np.inf)
        k = min(candidates, int(np.isfinite(scores).sum()))
        if k <= 0:
            return None
        cand = np.argpartition(-scores, k - 1)[:k]
        x = np.asfortranarray(self.unit_vecs[cand].T, dtype=np.float64)  # (D, k)
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


@lru_cache(maxsize=4)
def _load(store_id: int, key: str, store: ObjectStore) -> TextIndex:
    return TextIndex.from_bytes(store.get(key))


def load_index(store: ObjectStore, key: str) -> TextIndex:
    """The index under ``key``, parsed once per process (keys change when it is rebuilt)."""
    return _load(id(store), key, store)
