"""The search index a worker publishes and the web process queries (``backend.textsearch``).

Shared by the ``text_views`` task and ``benchmarks/search_quality.py``, so that the benchmark
measures exactly the vectors and the query path the product serves.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from workers.ml.text.heads import TextHead
from workers.ml.text.unit_vectors import example_vectors


def unit_text_vectors(
    head: TextHead,
    ids: torch.Tensor,
    outputs: torch.Tensor,
    top_ids: Mapping[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """Per layer (U, D): each unit's vector in the text space, from what the head says about
    its top examples (``outputs`` from ``head_outputs``; ``top_ids`` (U, k), -1 = none)."""
    space = example_vectors(ids, outputs, top_ids)  # path -> (U, S)
    return {path: head.to_text(v).float() for path, v in space.items()}  # path -> (U, D)


def search_index_arrays(
    layers: Sequence[tuple[str, torch.Tensor]],
    vocab: Sequence[str],
    vocab_emb: torch.Tensor,
) -> dict[str, np.ndarray]:
    """The arrays of a ``search_index`` artifact.

    layers: (layer name, its units' text vectors (U, D)) in page order; vocab_emb: (V, D).
    """
    unit_layer = np.concatenate([np.full(v.shape[0], i) for i, (_, v) in enumerate(layers)])
    unit_index = np.concatenate([np.arange(v.shape[0]) for _, v in layers])
    vecs = F.normalize(torch.cat([v for _, v in layers]).float(), dim=-1)  # (U_all, D)
    return {
        "layer_names": np.array([name for name, _ in layers]),
        "unit_layer": unit_layer.astype(np.int32),
        "unit_index": unit_index.astype(np.int32),
        "unit_vecs": vecs.numpy().astype(np.float32),
        "vocab": np.array(list(vocab)),
        "vocab_vecs": F.normalize(vocab_emb.float(), dim=-1).numpy().astype(np.float16),
    }
