"""Circuits (METHODS §6): how strongly each unit of one layer drives each unit of another.

Two units joined by one convolution are joined by its kernel. Most default layers are not:
between them sit depthwise and 1x1 stacks, residual additions and Inception concatenations.
There the *expanded weights* of the linearised path stand in for the kernel: BatchNorm folded
(it is affine in eval mode), activations taken as the identity, squeeze-excite gates as 1 and
max pooling as averaging, so the whole path is one affine map whose linear part is read off.

What is read is the weight summed over kernel positions: the response, away from the border,
to a constant field on one input channel. A constant field stays constant through every
convolution (a kernel then acts as its sum), pool and padding, so it is carried at 1x1
spatial size: one forward pass over a batch of one-hot channel vectors gives the whole
(C_target, C_source) matrix, exactly and cheaply, for any path through the network. The same
numbers at full size, read at the centre of a large constant field, are the check in the tests.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn
from torch.overrides import TorchFunctionMode

from workers.ml.hooks import StopForward, capture, get_module
from workers.ml.weights import GATE_PATHS

# Activations: the identity on the linearised path.
_ACTIVATIONS: set[Callable[..., Any]] = {
    F.relu,
    F.relu_,
    torch.relu,
    torch.relu_,
    torch.Tensor.relu,
    torch.Tensor.relu_,
    F.relu6,
    F.hardtanh,
    F.hardtanh_,
    F.silu,
    F.gelu,
    F.hardswish,
    F.leaky_relu,
    F.leaky_relu_,
    F.elu,
    F.celu,
    F.selu,
    F.mish,
}
# Sigmoids are gates (squeeze-excite, x * sigmoid(x) as SiLU): a gate of 1 passes x as it is.
_GATES: set[Callable[..., Any]] = {
    torch.sigmoid,
    torch.Tensor.sigmoid,
    F.sigmoid,
    F.hardsigmoid,
}
# A constant field passes through poolings, paddings and resizes unchanged.
_SPATIAL: set[Callable[..., Any]] = {
    F.max_pool2d,
    F.avg_pool2d,
    F.adaptive_avg_pool2d,
    F.adaptive_max_pool2d,
    F.lp_pool2d,
    F.pad,
    F.interpolate,
}


def _arg(args: Sequence[Any], kwargs: dict[str, Any], i: int, name: str, default: Any) -> Any:
    return args[i] if len(args) > i else kwargs.get(name, default)


def _summed_conv(
    x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, groups: int
) -> torch.Tensor:
    """A convolution on constant fields (N, C_in, 1, 1): its kernel's sum over positions as a
    matrix product per group (a matmul; a 1x1 conv2d on a large batch is several times slower)."""
    n, c_out = x.shape[0], w.shape[0]
    summed = w.reshape(c_out, w.shape[1], -1).sum(dim=2)  # (C_out, C_in/g)
    if groups == 1:
        y = F.linear(x.reshape(n, -1), summed, bias)  # (N, C_out)
    else:
        xs = x.reshape(n, groups, -1)  # (N, g, C_in/g)
        ws = summed.reshape(groups, c_out // groups, -1)  # (g, C_out/g, C_in/g)
        y = torch.einsum("ngi,goi->ngo", xs, ws).reshape(n, c_out)
        y = y + bias if bias is not None else y
    return y[:, :, None, None]  # (N, C_out, 1, 1)


class Linearised(TorchFunctionMode):
    """Run a model as the linear path it would be without activations and gates.

    ``constant_field``: carry constant fields at 1x1 (kernels act as their sums, poolings and
    paddings as the identity); otherwise run at full size with max pooling as averaging.
    """

    def __init__(self, *, constant_field: bool = True) -> None:
        super().__init__()
        self.constant_field = constant_field

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if func in _ACTIVATIONS:
            return _arg(args, kwargs, 0, "input", None)
        if func in _GATES:
            return torch.ones_like(_arg(args, kwargs, 0, "input", None))
        if self.constant_field:
            if func in _SPATIAL:
                return _arg(args, kwargs, 0, "input", None)
            if func in (F.conv2d, torch.conv2d):
                x, w = args[0], _arg(args, kwargs, 1, "weight", None)
                bias = _arg(args, kwargs, 2, "bias", None)
                groups = _arg(args, kwargs, 6, "groups", 1)
                return _summed_conv(x, w, bias, groups)
        elif func is F.max_pool2d:
            x = _arg(args, kwargs, 0, "input", None)
            k = _arg(args, kwargs, 1, "kernel_size", None)
            stride = _arg(args, kwargs, 2, "stride", None)
            padding = _arg(args, kwargs, 3, "padding", 0)
            ceil = _arg(args, kwargs, 5, "ceil_mode", False)
            return F.avg_pool2d(x, k, stride, padding, ceil, count_include_pad=False)
        return func(*args, **kwargs)


class NoCircuit(Exception):  # noqa: N818 - a reason, reported on the page
    """The layers are not joined by a path that can be linearised."""


@dataclass
class PathWeights:
    """The summed expanded weights from one layer's units to another's."""

    source: str  # module path of the layer read from
    target: str  # module path of the layer read at
    matrix: np.ndarray  # (C_target, C_source)
    convs: list[str]  # convolutions run between them, in forward order (gates left out)

    @property
    def direct(self) -> bool:
        """One convolution joins them: the numbers are its kernel's sums (BatchNorm folded)."""
        return len(self.convs) == 1


@contextmanager
def _eval(model: nn.Module) -> Iterator[None]:
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


def _convs_called(model: nn.Module, armed: list[bool]) -> tuple[list[str], list[Any]]:
    """Hooks that list the Conv2d modules called while ``armed[0]``; returns (list, handles)."""
    called: list[str] = []
    owner = threading.get_ident()

    def make(path: str) -> Callable[..., None]:
        def hook(*_: object) -> None:
            if armed[0] and threading.get_ident() == owner:
                called.append(path)

        return hook

    handles = [
        m.register_forward_hook(make(p))
        for p, m in model.named_modules()
        if isinstance(m, nn.Conv2d) and not GATE_PATHS & set(p.split("."))
    ]
    return called, handles


def path_weights(
    model: nn.Module, source: str, targets: Sequence[str], source_channels: int
) -> dict[str, PathWeights]:
    """The summed expanded weights from the ``source_channels`` units output by module
    ``source`` to each of ``targets`` (modules run after it), from one forward pass.

    The source's output is replaced by one-hot constant fields (and a zero field whose
    response, the biases', is subtracted); everything after it is linearised. Where a later
    layer also adds what came before the source, that part is the same for every probe and
    cancels; where it concatenates it, the batch sizes differ and NoCircuit says so.
    """
    if not targets:
        return {}
    n = source_channels
    probe = torch.cat([torch.zeros(1, n), torch.eye(n)])[:, :, None, None]  # (n+1, n, 1, 1)
    param = next(model.parameters())
    probe = probe.to(param.device, param.dtype)
    armed = [False]
    counts: dict[str, int] = {}

    def inject(_m: nn.Module, _i: object, out: object) -> torch.Tensor:
        if not isinstance(out, torch.Tensor) or out.dim() != 4 or out.shape[1] != n:
            raise NoCircuit(f"{source} does not output {n} channels as a feature map")
        armed[0] = True
        return probe

    called, handles = _convs_called(model, armed)
    # The way up to the source runs once, at batch 1: only what follows it sees the probe.
    x = torch.zeros(1, 3, 1, 1, device=param.device, dtype=param.dtype)  # (1, 3, 1, 1)
    try:
        handles.append(get_module(model, source).register_forward_hook(inject))
        for t in targets:

            def mark(*_: object, t: str = t) -> None:
                counts.setdefault(t, len(called))

            handles.append(get_module(model, t).register_forward_hook(mark))
        with (
            _eval(model),
            torch.no_grad(),
            Linearised(),
            capture(model, list(targets), stop_early=True) as store,
        ):
            try:
                model(x)
            except StopForward:
                pass
            except (RuntimeError, AssertionError, ValueError) as e:
                # Shapes that do not meet (not a cut of the network), or a model that checks
                # its input's size (a ViT): no linear path to read this way.
                raise NoCircuit(f"the path from {source} is not a chain of layers ({e})") from e
    finally:
        for h in handles:
            h.remove()
    out: dict[str, PathWeights] = {}
    for t in targets:
        if t not in store or not armed[0]:
            raise NoCircuit(f"{t} does not run after {source}")
        y = store[t].double().flatten(1)  # (n+1, C_target): 1x1 fields
        matrix = (y[1:] - y[:1]).T.cpu().numpy()  # (C_target, n)
        out[t] = PathWeights(source, t, matrix.astype(np.float32), called[: counts[t]])
    return out


def strongest(weights: np.ndarray, k: int) -> dict[str, list[tuple[int, float]]]:
    """The ``k`` largest positive and ``k`` most negative entries of a vector, as
    (index, weight) pairs, strongest first."""
    order = np.argsort(-weights, kind="stable")
    pos = [(int(i), float(weights[i])) for i in order[:k] if weights[i] > 0]
    neg = [(int(i), float(weights[i])) for i in order[::-1][:k] if weights[i] < 0]
    return {"positive": pos, "negative": neg}
