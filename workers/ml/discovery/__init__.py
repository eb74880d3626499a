"""Layer discovery: every layer with units, read from the model's own structure.

``graph`` traces the forward pass (torch.fx, or hooks where tracing fails), ``structure``
finds the outputs that hold units, ``rules`` picks the default layers for the kind of
architecture, ``naming`` applies the literature's names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from contracts.layout import Branch, Layout
from workers.ml.discovery.graph import Graph, TraceFailed, trace_graph
from workers.ml.discovery.hooked import hook_graph
from workers.ml.discovery.naming import (
    branch_name,
    convention,
    plain_names,
    rename,
    unique,
)
from workers.ml.discovery.rules import choose
from workers.ml.discovery.structure import Candidate, Structure, analyse


@dataclass
class LayerInfo:
    """A layer whose output channels (or hidden units) are browsable units."""

    name: str  # display name, e.g. "blocks.3" or "visual.transformer.resblocks.5.mlp"
    module_path: str  # path inside image_model
    kind: str  # stem | conv | block | stage | mixed | mlp | attnpool_input | linear | head
    unit_count: int
    output_shape: list[int]  # raw module output without the batch axis
    layout: Layout
    order: int  # forward execution order
    default: bool
    branches: list[Branch] | None = None  # parallel branches laid side by side (Inception)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "name": self.name,
            "module_path": self.module_path,
            "kind": self.kind,
            "unit_count": self.unit_count,
            "output_shape": list(self.output_shape),
            "layout": self.layout.to_dict(),
            "order": self.order,
            "default": self.default,
            "branches": [b.model_dump() for b in self.branches] if self.branches else None,
        }


@dataclass
class Discovery:
    """Every layer with units of a model, and how they were found."""

    rule: str  # the default rule that fits (rules.py)
    traced: bool  # True: torch.fx traced the model; False: hooks only
    layers: list[LayerInfo]


def model_graph(model: nn.Module, input_size: int) -> Graph:
    """The forward pass at batch 1: traced where torch.fx can, else from hooks."""
    param = next(model.parameters(), None)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, input_size, input_size, generator=gen)  # (1, 3, S, S)
    if param is not None:
        x = x.to(param.device, param.dtype)
    try:
        return trace_graph(model, x)
    except TraceFailed:
        return hook_graph(model, x)


def _prefix_tokens(model: nn.Module, seq_len: int) -> int:
    """Class/register tokens ahead of the patch grid."""
    n = getattr(model, "num_prefix_tokens", None)
    if isinstance(n, int):
        return n
    grid = getattr(model, "grid_size", None)
    if isinstance(grid, (tuple, list)) and len(grid) == 2:
        return seq_len - int(grid[0]) * int(grid[1])
    side = math.isqrt(seq_len)
    return seq_len - side * side


def _layout(model: nn.Module, c: Candidate) -> tuple[Layout, int] | None:
    """Layout and unit count of a candidate's batch-1 output; None: not unit-shaped."""
    shape = c.shape
    if c.kind in ("linear", "head"):
        return Layout("nc"), math.prod(shape[1:])
    if len(shape) == 3:
        # With batch 1 the batch axis is whichever axis has size 1 (L > 1 always).
        if shape[0] == 1:
            return Layout("nlc", _prefix_tokens(model, shape[1])), shape[2]
        return Layout("lnc", _prefix_tokens(model, shape[0])), shape[2]
    if len(shape) == 4:
        return (Layout("nhwc"), shape[3]) if c.channels_last else (Layout("nchw"), shape[1])
    if len(shape) == 2:
        return Layout("nc"), shape[1]
    return None


def _branches(s: Structure, c: Candidate, model_class: str) -> list[Branch] | None:
    if c.kind != "mixed":
        return None
    conv = convention(model_class)
    raw = [branch_name(s.part_names.get((c.path, int(op)), "part"), conv) for op, _, _ in c.parts]
    return [
        Branch(name=n, start=a, stop=b) for n, (_, a, b) in zip(unique(raw), c.parts, strict=True)
    ]


def discover(
    model: nn.Module,
    input_size: int,
    *,
    clip: bool = False,
    declared: list[str] | None = None,
    prefix: str = "",
) -> Discovery:
    """Every layer with units of ``model`` (in eval mode) in execution order, defaults marked.

    ``clip``: the model is a CLIP image tower (its output is the image embedding);
    ``declared``: the stages the model declares (timm's feature_info modules);
    ``prefix``: put before every layer name (``visual.`` for an open_clip tower).
    """
    graph = model_graph(model, input_size)
    s = analyse(graph, model, clip=clip)
    choice = choose(s, declared or [])
    model_class = type(model).__name__
    conv = convention(model_class)
    numbered = plain_names(graph, choice.layers, conv) if choice.rule == "plain" else {}
    infos: list[LayerInfo] = []
    for c in choice.layers:
        found = _layout(model, c)
        if found is None:
            continue
        layout, units = found
        name = numbered.get(c.op) or rename(c.name, conv)
        # The raw output without its batch axis (sequence-first tokens carry it second).
        shape = [c.shape[0], c.shape[2]] if layout.kind == "lnc" else list(c.shape[1:])
        infos.append(
            LayerInfo(
                name=f"{prefix}{name}",
                module_path=c.path,
                kind=c.kind,
                unit_count=int(units),
                output_shape=shape,
                layout=layout,
                order=len(infos),
                default=c.op in choice.defaults,
                branches=_branches(s, c, model_class),
            )
        )
    return Discovery(rule=choice.rule, traced=graph.traced, layers=infos)
