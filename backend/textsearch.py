"""Zero-shot neuron search in the web process: numpy only, no torch.

A worker precomputes, per model, an index (``search_index`` artifact, .npz): every unit's
text vector and the embeddings of a vocabulary (class names, prompts, dictionary words) in the
same space. A query is embedded here by composing vocabulary entries — the whole query when it
is a known phrase, else the mean of its known words — so answering needs one matrix-vector
product (about a millisecond for 20k units) and no text encoder in the web process.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from backend.storage import ObjectStore

_WORD = re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*")


@dataclass
class Hit:
    layer: str
    unit: int
    score: float


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


@lru_cache(maxsize=4)
def _load(store_id: int, key: str, store: ObjectStore) -> TextIndex:
    return TextIndex.from_bytes(store.get(key))


def load_index(store: ObjectStore, key: str) -> TextIndex:
    """The index under ``key``, parsed once per process (keys change when it is rebuilt)."""
    return _load(id(store), key, store)
