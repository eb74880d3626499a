"""The forward pass as a graph of module calls, for models torch.fx cannot trace.

One dry forward pass with a hook on every module. Each leaf module's call is an operation;
its inputs are the operations whose output tensors it reads (matched by identity, so an
in-place ReLU follows its convolution). A module whose output no submodule produced did some
functional work of its own: when that output is its submodules' outputs laid side by side on
the channel axis, checked by value, it is recorded as a concatenation of them (an Inception
module's branches); otherwise as an opaque operation. Every hook is removed on exit.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field

import torch
from torch import nn

from workers.ml.discovery.graph import (
    ACT,
    CAT,
    CONV,
    INPUT,
    LINEAR,
    OTHER,
    Graph,
    Op,
    inside,
    module_kind,
)


def _tensor(value: object) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    return None


def _key(t: torch.Tensor) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
    """A tensor's identity: an in-place op returns the same storage, shape and strides."""
    return t.data_ptr(), tuple(t.shape), tuple(t.stride())


@dataclass
class _Frame:
    """One running call of a module with submodules."""

    path: str
    first_op: int
    inputs: tuple[int, ...] = ()  # ops whose outputs the call was given
    children: list[tuple[str, torch.Tensor, int]] = field(default_factory=list)


Span = tuple[int, int, int | None]  # (start, stop, op); op None: made by no submodule


def _slices(out: torch.Tensor, parts: list[tuple[str, torch.Tensor, int]]) -> list[Span] | None:
    """Submodule outputs laid side by side on ``out``'s channel axis, in channel order, the
    gaps between them (a functional max-pool's share) as spans of no op; None unless at least
    two submodules' outputs are found there."""
    if out.dim() != 4:
        return None
    found: list[tuple[int, int, int]] = []
    for _, t, op in parts:
        if t.dim() != 4 or t.shape[2:] != out.shape[2:] or t.shape[1] >= out.shape[1]:
            continue
        c = t.shape[1]
        for start in range(out.shape[1] - c + 1):
            if torch.equal(out[:, start : start + c], t):
                found.append((start, start + c, op))
                break
    spans: list[Span] = []
    at = 0
    for start, stop, op in sorted(found):
        if start < at:
            continue  # overlaps a part already placed
        if start > at:
            spans.append((at, start, None))
        spans.append((start, stop, op))
        at = stop
    if at < out.shape[1]:
        spans.append((at, out.shape[1], None))
    return spans if sum(op is not None for _, _, op in spans) >= 2 else None


def _single_ops(model: nn.Module) -> set[str]:
    """Modules that run as one operation: those without submodules, and convolutions, norms
    (timm's BatchNormAct2d holds its activation), attentions... whatever their insides."""
    out: set[str] = set()

    def visit(prefix: str, m: nn.Module) -> None:
        for name, child in m.named_children():
            path = f"{prefix}{name}"
            if not list(child.children()) or module_kind(child) != OTHER:
                out.add(path)
            else:
                visit(f"{path}.", child)

    visit("", model)
    return out


def hook_graph(model: nn.Module, x: torch.Tensor) -> Graph:
    """The graph of module calls of ``model`` run on ``x`` (batch 1, random values so that
    concatenated parts can be told apart)."""
    modules = dict(model.named_modules())
    single = _single_ops(model)
    ops: list[Op] = [Op(0, INPUT, None, "", (), tuple(x.shape))]
    producer = {_key(x): 0}
    owners: dict[str, int] = {}
    calls: dict[str, int] = {}
    stack: list[_Frame] = []
    leaf_inputs: dict[str, tuple[int, ...]] = {}
    # Every output stays referenced until the pass ends: a freed tensor's memory could be
    # reused by a later one, which would then look like the same tensor.
    alive: list[torch.Tensor] = []

    def pre(path: str, leaf: bool):  # type: ignore[no-untyped-def]
        def hook(_m: nn.Module, args: tuple[object, ...]) -> None:
            calls[path] = calls.get(path, 0) + 1
            keys = [_key(a) for a in args if isinstance(a, torch.Tensor)]
            given = tuple(producer[k] for k in keys if k in producer)
            if leaf:
                leaf_inputs[path] = given
            else:
                stack.append(_Frame(path, len(ops), given))

        return hook

    def own_op(path: str, frame: _Frame, t: torch.Tensor) -> Op:
        """The op of a module whose output none of its submodules produced."""
        spans = _slices(t, frame.children) if frame.children else None
        if spans:
            parts = []
            for start, stop, op in spans:
                if op is None:  # functional work of the module itself
                    shape = (1, stop - start, *t.shape[2:])
                    ops.append(Op(len(ops), OTHER, None, path, frame.inputs, shape))
                    op = len(ops) - 1
                parts.append(op)
            return Op(len(ops), CAT, None, path, tuple(parts), tuple(t.shape), cat_dim=1)
        inner = ops[frame.first_op :]
        heavy = [o for o in inner if o.kind in (CONV, LINEAR)]
        if len(heavy) == 1 and inner and inner[-1].shape == tuple(t.shape):
            # One conv (and its norm) then a functional activation: conv-norm-act.
            return Op(len(ops), ACT, None, path, (inner[-1].index,), tuple(t.shape))
        last = (len(ops) - 1,) if inner else ()
        return Op(len(ops), OTHER, None, path, frame.inputs + last, tuple(t.shape))

    def post(path: str, leaf: bool):  # type: ignore[no-untyped-def]
        def hook(_m: nn.Module, _args: object, output: object) -> None:
            t = _tensor(output)
            frame = stack.pop() if not leaf else None
            if t is None:
                return
            alive.append(t)
            k = _key(t)
            if leaf:
                kind = module_kind(modules[path])
                op = Op(len(ops), kind, path, path, leaf_inputs[path], tuple(t.shape))
                ops.append(op)
            elif k in producer and frame is not None and producer[k] < frame.first_op:
                return  # the module handed its input back: it outputs nothing of its own
            elif k in producer:
                op = ops[producer[k]]  # a submodule's output, returned as it is
            else:
                assert frame is not None
                op = own_op(path, frame, t)
                ops.append(op)
            producer[k] = op.index
            owners[path] = op.index
            if stack:
                stack[-1].children.append((path, t, op.index))

        return hook

    with ExitStack() as hooks, torch.no_grad():
        for path, m in modules.items():
            if path == "" or any(inside(path, s) and path != s for s in single):
                continue
            leaf = path in single
            hooks.callback(m.register_forward_pre_hook(pre(path, leaf)).remove)
            hooks.callback(m.register_forward_hook(post(path, leaf)).remove)
        stack.append(_Frame("", 1))
        out = _tensor(model(x))
        if out is not None:
            k = _key(out)
            owners[""] = producer.get(k, len(ops) - 1)
    return Graph(ops=ops, owners=owners, calls=calls, traced=False)
