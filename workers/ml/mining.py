"""Dataset examples: exact streaming top-k for every unit of several layers in one pass.

A :class:`LayerReducer` keeps, per unit, O(k + R) numbers whatever the number of images:
the top-k images by the unit's max over positions, the bottom-k by its min, a bottom-R hash
sketch (a deterministic sample for quantile strata and histograms) and running moments.
Reducers are mergeable, and merging shards gives exactly the single-pass result, so a dataset
can be mined in shards on several workers and combined later from ``state_dict`` files.

Ranking is exact and deterministic through the int64 keys of ``workers/ml/keys.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from contracts.layout import Layout
from workers.ml.hooks import run_to, to_unit_maps
from workers.ml.kept_maps import KeptMaps, keep_batch, merge_kept
from workers.ml.keys import MAX_IMAGE_ID, decode_keys, make_keys, splitmix64
from workers.ml.layer_result import LayerResult, histogram, strata

STATE_VERSION = 2  # 2: the kept maps (version 1 states load without them)


def _max_argmax(
    maps: torch.Tensor, floor: torch.Tensor | None = None, ceiling: torch.Tensor | None = None
) -> tuple[torch.Tensor, ...]:
    """Per image and unit: max, flat argmax, min, flat argmin over positions, each (N, U).

    ``floor`` (U,): the argmax is only needed where the max reaches it (elsewhere it is 0);
    ``ceiling`` (U,): the argmin only where the min reaches down to it. Positions with indices
    cost 5x the values alone, and after the first images few maxima can still enter a top-k.
    """
    n, u, h, w = maps.shape
    if maps.stride(1) == 1 and u > 1:
        # Channels-last storage (nhwc layers, token grids): reduce over positions without a copy.
        flat = maps.permute(0, 2, 3, 1).reshape(n, h * w, u)  # (N, HW, U)
        dim = 1
    else:
        flat = maps.reshape(n, u, h * w)  # (N, U, HW)
        dim = 2
    if floor is None or ceiling is None:
        mx, amx = flat.max(dim=dim)  # (N, U)
        mn, amn = flat.min(dim=dim)  # (N, U)
        return mx, amx, mn, amn
    mx, mn = flat.amax(dim=dim), flat.amin(dim=dim)  # (N, U)
    amx = _positions(flat, dim, mx.float() >= floor, largest=True)
    amn = _positions(flat, dim, mn.float() <= ceiling, largest=False)
    return mx, amx, mn, amn


def _positions(flat: torch.Tensor, dim: int, wanted: torch.Tensor, largest: bool) -> torch.Tensor:
    """Flat argmax (or argmin) over positions (``dim`` of ``flat``) where ``wanted`` (N, U)."""
    n_idx, u_idx = wanted.nonzero(as_tuple=True)  # (C,) each
    rows = flat[n_idx, :, u_idx] if dim == 1 else flat[n_idx, u_idx]  # (C, HW)
    pos = torch.zeros(wanted.shape, dtype=torch.int64, device=flat.device)  # (N, U)
    pos[n_idx, u_idx] = rows.argmax(dim=1) if largest else rows.argmin(dim=1)
    return pos


@dataclass
class ReducerState:
    """The tensors a reducer keeps, all on one device; per-unit rows are sorted best first."""

    grid: tuple[int, int]  # (H, W) of the unit maps
    count: int  # images seen
    top_keys: torch.Tensor  # (U, <=k) int64 keys of the per-image max, descending
    top_pos: torch.Tensor  # (U, <=k) int64 flat argmax position y * W + x
    neg_keys: torch.Tensor  # (U, <=k) int64 keys of minus the per-image min: most negative first
    neg_pos: torch.Tensor  # (U, <=k) int64 flat argmin position
    sketch_hash: torch.Tensor  # (<=R,) int64 splitmix64(id), ascending
    sketch_ids: torch.Tensor  # (<=R,) int64
    sketch_scores: torch.Tensor  # (U, <=R) float32 per-image max of the sketch images
    sum: torch.Tensor  # (U,) float64 of per-image max
    sumsq: torch.Tensor  # (U,) float64 of squared per-image max
    active: torch.Tensor  # (U,) int64 images with max > 0
    min: torch.Tensor  # (U,) float32 global min over images and positions
    max: torch.Tensor  # (U,) float32 global max

    @property
    def unit_count(self) -> int:
        return int(self.top_keys.shape[0])

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensor fields by name."""
        return {f: getattr(self, f) for f in _TENSOR_FIELDS}


_TENSOR_FIELDS = tuple(f for f in ReducerState.__dataclass_fields__ if f not in ("grid", "count"))


def _batch_state(
    grid: tuple[int, int],
    mx: torch.Tensor,
    amx: torch.Tensor,
    mn: torch.Tensor,
    amn: torch.Tensor,
    ids: torch.Tensor,
) -> ReducerState:
    """Untruncated state of images with ids (N,) from their ``_max_argmax`` (N, U) each."""
    mx_t = mx.to(torch.float32).t()  # (U, N)
    mn_t = mn.to(torch.float32).t()  # (U, N)
    mx64 = mx_t.to(torch.float64)  # (U, N)
    return ReducerState(
        grid=grid,
        count=int(ids.shape[0]),
        top_keys=make_keys(mx_t, ids[None, :]),  # (U, N)
        top_pos=amx.t().to(torch.int64),  # (U, N)
        neg_keys=make_keys(-mn_t, ids[None, :]),  # (U, N)
        neg_pos=amn.t().to(torch.int64),  # (U, N)
        sketch_hash=splitmix64(ids),  # (N,)
        sketch_ids=ids,
        sketch_scores=mx_t,  # (U, N)
        sum=mx64.sum(dim=1),  # (U,)
        sumsq=(mx64 * mx64).sum(dim=1),  # (U,)
        active=(mx_t > 0).sum(dim=1),  # (U,)
        min=mn_t.amin(dim=1),  # (U,)
        max=mx_t.amax(dim=1),  # (U,)
    )  # fmt: skip


def _combine(a: ReducerState | None, b: ReducerState, k: int, r: int) -> ReducerState:
    """State of the union of two disjoint image sets, truncated to k examples and R sketch."""
    if a is None:
        # Still truncate: a batch larger than k or R arrives untruncated.
        top_keys, top_pos = _top(b.top_keys, b.top_pos, k)
        neg_keys, neg_pos = _top(b.neg_keys, b.neg_pos, k)
        sketch = _bottom_hash(b.sketch_hash, b.sketch_ids, b.sketch_scores, r)
        return ReducerState(
            b.grid, b.count, top_keys, top_pos, neg_keys, neg_pos, *sketch,
            b.sum, b.sumsq, b.active, b.min, b.max,
        )  # fmt: skip
    if a.grid != b.grid or a.unit_count != b.unit_count:
        raise ValueError(
            f"layer shape changed: {a.unit_count} units on {a.grid} "
            f"vs {b.unit_count} units on {b.grid}"
        )
    dev = a.top_keys.device
    bt = {name: t.to(dev) for name, t in b.tensors().items()}
    top_keys, top_pos = _top(
        torch.cat([a.top_keys, bt["top_keys"]], dim=1),  # (U, k + N)
        torch.cat([a.top_pos, bt["top_pos"]], dim=1),
        k,
    )
    neg_keys, neg_pos = _top(
        torch.cat([a.neg_keys, bt["neg_keys"]], dim=1),
        torch.cat([a.neg_pos, bt["neg_pos"]], dim=1),
        k,
    )
    sketch = _bottom_hash(
        torch.cat([a.sketch_hash, bt["sketch_hash"]]),  # (R + N,)
        torch.cat([a.sketch_ids, bt["sketch_ids"]]),
        torch.cat([a.sketch_scores, bt["sketch_scores"]], dim=1),  # (U, R + N)
        r,
    )
    return ReducerState(
        a.grid,
        a.count + b.count,
        top_keys,
        top_pos,
        neg_keys,
        neg_pos,
        *sketch,
        a.sum + bt["sum"],
        a.sumsq + bt["sumsq"],
        a.active + bt["active"],
        torch.minimum(a.min, bt["min"]),
        torch.maximum(a.max, bt["max"]),
    )


class LayerReducer:
    """Streaming, mergeable per-unit state of one layer; memory O(units x (k + R))."""

    # Batches are reduced to per-image max/min first and folded into the top-k and sketch
    # state this many images at a time: the fold's cost (sorting k + N keys and R + N sketch
    # entries per unit) then falls on few large batches instead of every small one (1,024
    # images: the reducer's time per batch 0.8x that of 256, benchmarks/mining_scale.py's
    # layers). With kept maps, the pending batches' unit maps wait for the fold too (choosing
    # the kept ones per batch cost a fifth of the shard jobs' time). A fold comes sooner once
    # what waits (maps and per-image values) holds ``fold_bytes``: big layers stay bounded.
    fold_images = 1024
    fold_bytes = 32 * 2**20

    def __init__(self, k: int = 64, sketch_size: int = 1024, maps: int = 0) -> None:
        """``maps``: per unit, keep the unit maps of this many best (and most negative)
        examples (``workers/ml/kept_maps.py``); at most k."""
        if k < 1 or sketch_size < 1:
            raise ValueError("k and sketch_size must be positive")
        if not 0 <= maps <= k:
            raise ValueError("maps must lie in [0, k]")
        self.k = k
        self.sketch_size = sketch_size
        self.maps = maps
        self._kept: KeptMaps | None = None
        # Created by the first update, on the activations' device.
        self._state: ReducerState | None = None
        # Not yet folded: per batch (max, argmax, min, argmin (N, U) each, ids (N,)), of maps
        # on the grid ``_pending_grid``.
        self._pending: list[tuple[torch.Tensor, ...]] = []
        self._pending_grid = (0, 0)
        self._pending_images = 0
        self._pending_maps: list[torch.Tensor] = []  # (N, U, H, W) per batch, with maps kept
        self._pending_bytes = 0
        # The k-th best max and k-th most negative min so far (U,) each, once k images are in:
        # images below them cannot enter, so their argmax and argmin are not computed.
        self._bounds: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None)

    @property
    def kept(self) -> KeptMaps | None:
        """The kept maps of everything seen so far (pending batches folded in)."""
        self._fold()
        return self._kept

    @kept.setter
    def kept(self, value: KeptMaps | None) -> None:
        self._fold()
        self._kept = value

    @property
    def state(self) -> ReducerState | None:
        """Everything seen so far (pending batches folded in)."""
        self._fold()
        return self._state

    @state.setter
    def state(self, value: ReducerState | None) -> None:
        self._fold()
        self._state = value
        self._bounds = _bounds(value, self.k)

    @property
    def count(self) -> int:
        return self._pending_images + (0 if self._state is None else self._state.count)

    def update(self, maps: torch.Tensor, ids: torch.Tensor) -> None:
        """Fold one batch of unit maps (N, U, H, W) with image ids (N,) into the state."""
        if maps.dim() != 4:
            raise ValueError(f"expected (N, U, H, W) unit maps, got shape {tuple(maps.shape)}")
        if ids.shape != (maps.shape[0],):
            raise ValueError(f"expected {maps.shape[0]} image ids, got shape {tuple(ids.shape)}")
        if maps.shape[0] == 0:
            return
        ids = ids.to(device=maps.device, dtype=torch.int64)
        if int(ids.min()) < 0 or int(ids.max()) > MAX_IMAGE_ID:
            raise ValueError(f"image ids must lie in [0, {MAX_IMAGE_ID}]")
        grid = (int(maps.shape[2]), int(maps.shape[3]))
        shape = None
        if self._pending:
            shape = (self._pending_grid, int(self._pending[0][0].shape[1]))
        elif self._state is not None:
            shape = (self._state.grid, self._state.unit_count)
        if shape is not None and shape != (grid, int(maps.shape[1])):
            raise ValueError(
                f"layer shape changed: {shape[1]} units on {shape[0]} "
                f"vs {maps.shape[1]} units on {grid}"
            )
        pending = (*_max_argmax(maps, *self._bounds), ids)
        self._pending.append(pending)
        self._pending_grid = grid
        self._pending_images += int(ids.shape[0])
        self._pending_bytes += sum(t.numel() * t.element_size() for t in pending)
        if self.maps:
            self._pending_maps.append(maps.detach())
            self._pending_bytes += maps.numel() * maps.element_size()
        if self._pending_images >= self.fold_images or self._pending_bytes >= self.fold_bytes:
            self._fold()

    def _fold(self) -> None:
        if not self._pending:
            return
        mx, amx, mn, amn, ids = (torch.cat(t) for t in zip(*self._pending, strict=True))
        self._pending, self._pending_images, self._pending_bytes = [], 0, 0
        if self._pending_maps:
            maps = torch.cat(self._pending_maps)  # (N, U, H, W)
            self._pending_maps = []
            self._kept = keep_batch(self._kept, maps, mx, mn, ids, self.maps)
            del maps
        batch = _batch_state(self._pending_grid, mx, amx, mn, amn, ids)
        self._state = _combine(self._state, batch, self.k, self.sketch_size)
        self._bounds = _bounds(self._state, self.k)

    def merge(self, other: LayerReducer) -> LayerReducer:
        """A new reducer equal to one that saw both inputs in a single pass."""
        return merge_reducers([self, other])

    def state_dict(self) -> dict[str, Any]:
        """The state as CPU tensors and plain values (loadable with weights_only=True)."""
        out: dict[str, Any] = {
            "version": STATE_VERSION,
            "k": self.k,
            "sketch_size": self.sketch_size,
            "maps": self.maps,
            "state": None,
            "kept": None if self.kept is None else self.kept.state_dict(),
        }
        if self.state is not None:
            st = {name: t.detach().cpu() for name, t in self.state.tensors().items()}
            out["state"] = {"grid": list(self.state.grid), "count": self.state.count, **st}
        return out

    @classmethod
    def from_state_dict(
        cls, state: dict[str, Any], device: torch.device | str | None = None
    ) -> LayerReducer:
        """Rebuild a reducer saved by :meth:`state_dict` (optionally onto ``device``)."""
        if state.get("version") not in (1, STATE_VERSION):
            raise ValueError(f"unsupported reducer state version {state.get('version')!r}")
        out = cls(int(state["k"]), int(state["sketch_size"]), int(state.get("maps", 0)))
        if state.get("kept") is not None:
            out.kept = KeptMaps.from_state_dict(state["kept"], device)
        st = state["state"]
        if st is not None:
            tensors = {f: st[f].to(device) if device else st[f].clone() for f in _TENSOR_FIELDS}
            h, w = st["grid"]
            out.state = ReducerState(grid=(int(h), int(w)), count=int(st["count"]), **tensors)
        return out

    def finalize(self, n_strata: int = 8, per_stratum: int = 8, bins: int = 32) -> LayerResult:
        """Per-unit top and negative examples, quantile strata, histogram and stats."""
        st = self.state
        if st is None:
            raise ValueError("no images were processed")
        w = st.grid[1]
        top_scores, top_ids = decode_keys(st.top_keys)  # (U, k)
        neg = None
        if bool((st.min < 0).any()):
            neg_scores, neg_ids = decode_keys(st.neg_keys)
            neg = (neg_ids, -neg_scores, st.neg_pos // w, st.neg_pos % w)
        top_maps, neg_maps = self._kept_maps(st, neg is not None)
        strata_ids, strata_scores, edges = strata(
            st.sketch_scores, st.sketch_ids, n_strata, per_stratum
        )
        counts, lo, hi = histogram(st.sketch_scores, bins)
        n = float(st.count)
        mean = st.sum / n
        var = (st.sumsq / n - mean * mean).clamp_min(0.0)
        return LayerResult(
            grid=st.grid,
            count=st.count,
            top_ids=top_ids,
            top_scores=top_scores,
            top_y=st.top_pos // w,
            top_x=st.top_pos % w,
            neg_ids=neg[0] if neg else None,
            neg_scores=neg[1] if neg else None,
            neg_y=neg[2] if neg else None,
            neg_x=neg[3] if neg else None,
            top_maps=top_maps,
            neg_maps=neg_maps,
            strata_ids=strata_ids,
            strata_scores=strata_scores,
            strata_edges=edges,
            hist_counts=counts,
            hist_lo=lo,
            hist_hi=hi,
            mean=mean,
            std=var.sqrt(),
            active_share=st.active.to(torch.float64) / n,
            min=st.min.clone(),
            max=st.max.clone(),
        )

    def _kept_maps(
        self, st: ReducerState, negative: bool
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The kept maps, rows aligned with the first examples of the top-k (and negative)."""
        kept = self.kept
        if kept is None:
            return None, None
        m = kept.top_keys.shape[1]
        for name, got, keys in (
            ("top", kept.top_keys, st.top_keys),
            ("negative", kept.neg_keys, st.neg_keys),
        ):
            if not torch.equal(got, keys[:, :m]):
                raise RuntimeError(f"kept maps out of step with the {name} examples")
        return kept.top_maps, kept.neg_maps if negative else None


def _bounds(st: ReducerState | None, k: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The scores an image must reach to enter the top-k (max >= floor) or the negative k
    (min <= ceiling), per unit; None until k images are in. Ties reach: the id decides."""
    if st is None or st.top_keys.shape[1] < k:
        return None, None
    floor, _ = decode_keys(st.top_keys[:, -1])  # (U,)
    neg, _ = decode_keys(st.neg_keys[:, -1])  # (U,) minus the k-th most negative min
    return floor, -neg


def _top(keys: torch.Tensor, pos: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest keys per row (sorted, best first) with their positions."""
    # keys, pos (U, M); keys are unique per row, so the result is exact and deterministic.
    kk = min(k, keys.shape[1])
    top, idx = torch.topk(keys, kk, dim=1, largest=True, sorted=True)  # (U, kk)
    return top, torch.gather(pos, 1, idx)


def _bottom_hash(
    hashes: torch.Tensor, ids: torch.Tensor, scores: torch.Tensor, r: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep the r images with the smallest id hash: the same set whatever the sharding."""
    # hashes, ids (M,); scores (U, M). splitmix64 is a bijection, so hashes never tie.
    rr = min(r, hashes.shape[0])
    h, idx = torch.topk(hashes, rr, largest=False, sorted=True)  # (rr,)
    return h, ids[idx], scores[:, idx]


def merge_reducers(reducers: Sequence[LayerReducer]) -> LayerReducer:
    """Merge shard reducers of one layer; equal to a single pass over all shards."""
    if not reducers:
        raise ValueError("nothing to merge")
    out = LayerReducer(reducers[0].k, reducers[0].sketch_size, reducers[0].maps)
    for r in reducers:
        if (r.k, r.sketch_size, r.maps) != (out.k, out.sketch_size, out.maps):
            raise ValueError("cannot merge reducers with different k, sketch size or maps")
        if r.state is not None:
            out.state = _combine(out.state, r.state, out.k, out.sketch_size)
            out.kept = merge_kept(out.kept, r.kept, out.maps)
    return out


def merge_layer_states(shards: Iterable[dict[str, LayerReducer]]) -> dict[str, LayerReducer]:
    """Merge per-layer reducers of several shards (each a dict as returned by Miner.run), one
    shard at a time: from an iterator that loads each, one shard's state is held at a time."""
    merged: dict[str, LayerReducer] | None = None
    for shard in shards:
        if merged is None:
            merged = {path: merge_reducers([r]) for path, r in shard.items()}
        else:
            merged = {path: merge_reducers([r, shard[path]]) for path, r in merged.items()}
    if merged is None:
        raise ValueError("nothing to merge")
    return merged


Progress = Callable[[int], None]


class Miner:
    """One :class:`LayerReducer` per layer, fed by truncated forward passes."""

    def __init__(
        self,
        layers: dict[str, Layout],
        k: int = 64,
        sketch_size: int = 1024,
        autocast_dtype: torch.dtype | None = None,
        maps: int = 0,
    ) -> None:
        """``maps``: the unit maps of each unit's best this many examples are kept
        (``LayerReducer``)."""
        if not layers:
            raise ValueError("no layers to mine")
        self.layers = dict(layers)
        # fp32 by default: bf16/fp16 scores tie and reorder near-equal images, so reduced
        # precision is opt-in (CUDA only) for throughput when exact ranking matters less.
        self.autocast_dtype = autocast_dtype
        self.reducers = {p: LayerReducer(k, sketch_size, maps) for p in self.layers}

    def update(self, model: nn.Module, images: torch.Tensor, ids: torch.Tensor) -> None:
        """Run one batch (N, 3, S, S) to the deepest mined layer and fold it in."""
        if model.training:
            raise ValueError("put the model in eval mode before mining (dropout, batch norm)")
        param = next(model.parameters(), None)
        device = param.device if param is not None else images.device
        x = images.to(device, non_blocking=True)
        if param is not None and x.dtype != param.dtype and param.dtype.is_floating_point:
            x = x.to(param.dtype)
        with torch.inference_mode():
            if self.autocast_dtype is not None and device.type == "cuda":
                with torch.autocast("cuda", dtype=self.autocast_dtype):
                    outputs = run_to(model, x, list(self.layers))
            else:
                outputs = run_to(model, x, list(self.layers))
            for path, layout in self.layers.items():
                self.reducers[path].update(to_unit_maps(outputs[path], layout), ids)
            del outputs  # drop the activations (but kept maps pending their fold)

    def run(
        self,
        model: nn.Module,
        batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
        progress: Progress | None = None,
    ) -> dict[str, LayerReducer]:
        """Mine every batch of (images (N, 3, S, S), ids (N,)); return the reducers."""
        done = 0
        for images, ids in batches:
            self.update(model, images, ids)
            done += int(ids.shape[0])
            if progress is not None:
                progress(done)
        return self.reducers
