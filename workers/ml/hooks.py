"""Forward hooks held as handles: capture layer outputs and stop the forward pass early.

Every hook registered here is removed when its context exits, whatever happens inside.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from contracts.layout import Layout


class StopForward(Exception):  # noqa: N818 - control flow, not an error
    """Raised from a hook once every requested output has been captured."""


def get_module(model: nn.Module, path: str) -> nn.Module:
    """The submodule at a dotted path ('' is the model itself); KeyError if absent."""
    if path == "":
        return model
    modules = dict(model.named_modules())
    if path not in modules:
        raise KeyError(f"module {path!r} not found in {type(model).__name__}")
    return modules[path]


def norm_or_act(m: nn.Module) -> bool:
    """A module that only normalises or activates its input (timm's BatchNormAct2d too)."""
    acts = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Identity)
    return isinstance(m, (nn.BatchNorm2d, *acts))


def producing_conv(model: nn.Module, path: str, units: int) -> str:
    """The module whose weights make a layer's units: the layer's own, or, for a layer read
    after its activation (AlexNet's ``features.1``, ResNet's stem ``relu``), the nearest
    convolution defined before it with one output channel per unit. Weight views and linear
    readouts skip activations, so both are read through that convolution."""
    named = list(model.named_modules())
    paths = [p for p, _ in named]
    if not path or path not in paths or not norm_or_act(named[paths.index(path)][1]):
        return path  # (a path that is not a module is the caller's to report)
    at = paths.index(path)
    for p, m in reversed(named[:at]):
        if isinstance(m, nn.Conv2d) and m.out_channels == units:
            return p
    return path


def _first_tensor(output: object) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"module output of type {type(output).__name__} holds no tensor")


@contextmanager
def capture(
    model: nn.Module, paths: Sequence[str], *, stop_early: bool = False, detach: bool = True
) -> Iterator[dict[str, torch.Tensor]]:
    """Capture the outputs of ``paths`` into the yielded dict during forward passes.

    With ``stop_early`` the forward pass raises :class:`StopForward` as soon as all paths have
    fired, so layers after the deepest requested one never run; use :func:`run_to`.
    """
    wanted = list(dict.fromkeys(paths))
    store: dict[str, torch.Tensor] = {}
    handles = []
    # A model can be shared by threads (a worker's cached model; Celery runs delayed tasks on
    # its timer thread): a hook only records, and only stops, the forward pass of its own thread.
    owner = threading.get_ident()

    def make_hook(name: str):
        def hook(_module: nn.Module, _inputs: object, output: object) -> None:
            if threading.get_ident() != owner:
                return
            t = _first_tensor(output)
            store[name] = t.detach() if detach else t
            if stop_early and len(store) == len(wanted):
                raise StopForward

        return hook

    try:
        for p in wanted:
            handles.append(get_module(model, p).register_forward_hook(make_hook(p)))
        yield store
    finally:
        for h in handles:
            h.remove()


def run_to(
    model: nn.Module, x: torch.Tensor, paths: Sequence[str], *, detach: bool = True
) -> dict[str, torch.Tensor]:
    """Run ``model(x)`` only as far as the deepest of ``paths``; return their raw outputs."""
    with capture(model, paths, stop_early=True, detach=detach) as store:
        try:
            model(x)
        except StopForward:
            pass
        missing = [p for p in paths if p not in store]
        if missing:
            raise RuntimeError(f"layers {missing} did not run in the forward pass")
        return dict(store)


def to_unit_maps(t: torch.Tensor, layout: Layout) -> torch.Tensor:
    """Reshape a raw layer output to (N, U, H, W) so every unit has a spatial map."""
    if layout.kind == "nchw":
        return t  # (N, C, H, W)
    if layout.kind == "nhwc":
        return t.permute(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
    if layout.kind == "nc":
        return t.reshape(t.shape[0], -1)[:, :, None, None]  # (N, U) -> (N, U, 1, 1)
    if layout.kind in ("nlc", "lnc"):
        tokens = t if layout.kind == "nlc" else t.transpose(0, 1)  # (N, L, C)
        patches = tokens[:, layout.prefix_tokens :, :]  # (N, P, C)
        n, p, c = patches.shape
        side = math.isqrt(p)
        if side * side != p:
            # Not a square grid: keep the token axis as a 1 x P map.
            return patches.transpose(1, 2)[:, :, None, :]
        return patches.transpose(1, 2).reshape(n, c, side, side)  # (N, C, gh, gw)
    raise ValueError(f"unknown layout kind {layout.kind!r}")
