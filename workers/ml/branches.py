"""Branches of a layer read from the network itself (METHODS §6, §10), for models whose layers
do not list them: the pieces a layer's output is concatenated from (an Inception module's
1x1, 3x3, 5x5 and pool branches), or the groups of a grouped convolution (AlexNet's two
GPU halves). Residual blocks add their paths into every unit, so their units do not split
into branches and none are derived for them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from workers.ml.hooks import capture, get_module


@dataclass(frozen=True)
class DerivedBranch:
    """Units [start, stop) of a layer, made by one branch."""

    name: str
    start: int
    stop: int
    convs: str = ""  # the kernel sizes along the branch, e.g. "1x1, 3x3"


class _Concats(TorchFunctionMode):
    """Records every torch.cat along the channel axis: (pieces, result)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[list[torch.Tensor], torch.Tensor]] = []

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in (torch.cat, torch.concat, torch.concatenate):
            dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
            pieces = list(args[0] if args else kwargs["tensors"])
            if isinstance(out, torch.Tensor) and out.dim() == 4 and dim in (1, -3):
                self.calls.append((pieces, out))
        return out


def _kernels(module: nn.Module) -> str:
    sizes = [
        "x".join(str(k) for k in m.kernel_size)
        for m in module.modules()
        if isinstance(m, nn.Conv2d)
    ]
    return ", ".join(sizes)


def concat_branches(
    model: nn.Module, module_paths: Sequence[str], input_size: int
) -> dict[str, list[DerivedBranch]]:
    """For each layer, the branches its output is concatenated from, named by the child
    module that makes each piece (empty when the output is not a channel concatenation);
    one forward pass for all of them."""
    children = {p: dict(get_module(model, p).named_children()) for p in module_paths}
    child_paths = [f"{p}.{c}" if p else c for p in module_paths for c in children[p]]
    param = next(model.parameters())
    x = torch.zeros(1, 3, input_size, input_size, device=param.device, dtype=param.dtype)
    mode = _Concats()
    with (
        torch.no_grad(),
        capture(model, [*module_paths, *child_paths], detach=False) as store,
        mode,
    ):
        model(x)
    by_result = {id(result): pieces for pieces, result in mode.calls}
    found: dict[str, list[DerivedBranch]] = {}
    for path in module_paths:
        out = store.get(path)
        match = by_result.get(id(out)) if out is not None else None
        found[path] = []
        if match is None:
            continue
        names = {id(store[c]): c.rpartition(".")[2] for c in child_paths if c in store}
        start = 0
        for k, piece in enumerate(match):
            name = names.get(id(piece))
            own = name is not None and name in children[path]
            stop = start + int(piece.shape[1])
            label = name if own and name else f"part{k + 1}"
            convs = _kernels(children[path][label]) if own else ""
            found[path].append(DerivedBranch(label, start, stop, convs))
            start = stop
    return found


def group_branches(conv: nn.Conv2d) -> list[DerivedBranch]:
    """A grouped (not depthwise) convolution's groups as branches; empty otherwise."""
    g = conv.groups
    if g == 1 or g == conv.out_channels:
        return []
    size = conv.out_channels // g
    kernel = "x".join(str(k) for k in conv.kernel_size)
    return [DerivedBranch(f"group{i + 1}", i * size, (i + 1) * size, kernel) for i in range(g)]
