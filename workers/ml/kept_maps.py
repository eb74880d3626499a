"""The unit maps of each unit's best few examples, kept while mining.

An example sheet draws each shown example's heatmap from the unit's map on that image. Kept
from the mining pass itself, the maps need no second forward pass over the shown images when
the sheets are drawn (on a CPU worker that pass cost more than drawing the sheets). Per unit,
the maps of the ``m`` best images by the top-k's key (max over positions) and of the ``m``
most negative (by the negative key) are kept, so a merge of shards keeps exactly the maps of
the merged top-``m``: the global best ``m`` are among each shard's best ``m``.

Stored as float16 (clamped to its range): a heatmap is drawn on 256 colours of the map
normalised to its own range, far coarser than float16's precision, and halves the state.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workers.ml.keys import make_keys

DTYPE = torch.float16
_LIMIT = float(torch.finfo(DTYPE).max)


@dataclass
class KeptMaps:
    """Per unit, the best ``m`` keys, best first, with the unit's map on each image."""

    top_keys: torch.Tensor  # (U, <=m) int64, descending: the top-k's keys
    top_maps: torch.Tensor  # (U, <=m, H, W) float16
    neg_keys: torch.Tensor  # (U, <=m) int64, descending: the negative examples' keys
    neg_maps: torch.Tensor  # (U, <=m, H, W) float16

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            "top_keys": self.top_keys.detach().cpu(),
            "top_maps": self.top_maps.detach().cpu(),
            "neg_keys": self.neg_keys.detach().cpu(),
            "neg_maps": self.neg_maps.detach().cpu(),
        }

    @classmethod
    def from_state_dict(
        cls, st: dict[str, torch.Tensor], device: torch.device | str | None = None
    ) -> KeptMaps:
        return cls(**{f: st[f].to(device) if device else st[f].clone() for f in _FIELDS})


_FIELDS = ("top_keys", "top_maps", "neg_keys", "neg_maps")


def _stored(maps: torch.Tensor) -> torch.Tensor:
    return maps.clamp(-_LIMIT, _LIMIT).to(DTYPE) if maps.dtype != DTYPE else maps


def _best(
    keys_a: torch.Tensor, maps_a: torch.Tensor, keys_b: torch.Tensor, maps_b: torch.Tensor, m: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``m`` largest keys per unit of two candidate sets, with their maps.

    keys_a (U, a) and maps_a (U, a, H, W) (a may be 0); keys_b (U, b) and maps_b (U, b, H, W),
    which may be a strided view. Only the chosen maps are copied."""
    a = keys_a.shape[1]
    keys = torch.cat([keys_a, keys_b], dim=1)  # (U, a + b)
    top, idx = torch.topk(keys, min(m, keys.shape[1]), dim=1)  # (U, m'); keys are unique
    if a == top.shape[1] and not bool((idx >= a).any()):
        return keys_a, maps_a  # nothing new made it in (most batches once a shard is warm)
    rows = torch.arange(keys.shape[0], device=keys.device)[:, None]  # (U, 1)
    from_b = _stored(maps_b[rows, (idx - a).clamp_min(0)])  # (U, m', H, W)
    if a == 0:
        return top, from_b
    from_a = maps_a[rows, idx.clamp_max(a - 1)]  # (U, m', H, W)
    return top, torch.where((idx < a)[:, :, None, None], from_a, from_b)


def keep_batch(
    kept: KeptMaps | None,
    maps: torch.Tensor,
    mx: torch.Tensor,
    mn: torch.Tensor,
    ids: torch.Tensor,
    m: int,
) -> KeptMaps:
    """``kept`` updated with one batch: unit maps (N, U, H, W), their per-image max and min
    (N, U) and image ids (N,)."""
    batch_maps = maps.detach().transpose(0, 1)  # (U, N, H, W), a view: only the kept are copied
    top_b = make_keys(mx.to(torch.float32).t(), ids[None, :])  # (U, N)
    neg_b = make_keys(-mn.to(torch.float32).t(), ids[None, :])
    if kept is None:
        empty_k = top_b[:, :0]
        empty_m = _stored(batch_maps[:, :0])
        kept = KeptMaps(empty_k, empty_m, empty_k, empty_m)
    top_keys, top_maps = _best(kept.top_keys, kept.top_maps, top_b, batch_maps, m)
    neg_keys, neg_maps = _best(kept.neg_keys, kept.neg_maps, neg_b, batch_maps, m)
    return KeptMaps(top_keys, top_maps, neg_keys, neg_maps)


def merge_kept(a: KeptMaps | None, b: KeptMaps | None, m: int) -> KeptMaps | None:
    """The kept maps of the union of two disjoint image sets."""
    if a is None or b is None:
        return a if b is None else b
    dev = a.top_keys.device
    top_keys, top_maps = _best(a.top_keys, a.top_maps, b.top_keys.to(dev), b.top_maps.to(dev), m)
    neg_keys, neg_maps = _best(a.neg_keys, a.neg_maps, b.neg_keys.to(dev), b.neg_maps.to(dev), m)
    return KeptMaps(top_keys, top_maps, neg_keys, neg_maps)
