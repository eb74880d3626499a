"""The forward pass as a graph of operations, read from the model itself.

Where torch.fx can trace the model (as torchvision's feature extraction does, with timm's
leaf modules and wrapped functions), the graph is the traced one: every operation, functional
ones included (the ``torch.cat`` of an Inception module's branches, a residual add, an
``F.relu``), each with the module it ran inside. Where tracing fails (control flow that
depends on the data), :mod:`workers.ml.discovery.hooked` builds a coarser graph of module calls
from one dry forward pass with a hook on every module. Either way the graph says which module
returns which operation's output: the points a forward hook can capture.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

# What an operation does, as far as finding units goes.
CONV, LINEAR, NORM, ACT, POOL, CAT, ADD, ATTN, PASS, INPUT, OTHER = (
    "conv",
    "linear",
    "norm",
    "act",
    "pool",
    "cat",
    "add",
    "attn",
    "pass",  # returns its input's values (dropout, identity, flatten)
    "input",
    "other",
)

_MODULE_KINDS: tuple[tuple[tuple[type[nn.Module], ...], str], ...] = (
    ((nn.modules.conv._ConvNd,), CONV),
    ((nn.Linear,), LINEAR),
    (
        (
            nn.modules.batchnorm._NormBase,
            nn.LayerNorm,
            nn.GroupNorm,
            nn.LocalResponseNorm,
            nn.RMSNorm,
        ),
        NORM,
    ),
    (
        (
            nn.ReLU,
            nn.ReLU6,
            nn.GELU,
            nn.SiLU,
            nn.Hardswish,
            nn.Mish,
            nn.ELU,
            nn.LeakyReLU,
            nn.PReLU,
            nn.Tanh,
            nn.Sigmoid,
            nn.Hardtanh,
            nn.Softplus,
        ),
        ACT,
    ),
    (
        (
            nn.modules.pooling._MaxPoolNd,
            nn.modules.pooling._AvgPoolNd,
            nn.modules.pooling._AdaptiveAvgPoolNd,
            nn.modules.pooling._AdaptiveMaxPoolNd,
        ),
        POOL,
    ),
    ((nn.MultiheadAttention,), ATTN),
    ((nn.modules.dropout._DropoutNd, nn.Identity, nn.Flatten), PASS),
)
# Activations defined outside torch (open_clip's QuickGELU, timm's GELUTanh) by their names.
_ACT_NAME = re.compile(r"(gelu|relu|silu|swish|mish|hardswish|sigmoid|tanh)\w*$", re.IGNORECASE)

_FUNCTION_KINDS: dict[Any, str] = {
    F.conv1d: CONV,
    F.conv2d: CONV,
    F.conv3d: CONV,
    torch.conv2d: CONV,
    F.linear: LINEAR,
    F.batch_norm: NORM,
    F.layer_norm: NORM,
    F.group_norm: NORM,
    F.relu: ACT,
    torch.relu: ACT,
    F.relu6: ACT,
    F.gelu: ACT,
    F.silu: ACT,
    F.hardswish: ACT,
    F.hardtanh: ACT,
    F.leaky_relu: ACT,
    F.elu: ACT,
    F.mish: ACT,
    torch.sigmoid: ACT,
    torch.tanh: ACT,
    F.max_pool2d: POOL,
    F.avg_pool2d: POOL,
    F.adaptive_avg_pool2d: POOL,
    F.adaptive_max_pool2d: POOL,
    torch.cat: CAT,
    torch.concat: CAT,
    torch.concatenate: CAT,
    operator.add: ADD,
    operator.iadd: ADD,
    torch.add: ADD,
    F.scaled_dot_product_attention: ATTN,
    F.multi_head_attention_forward: ATTN,
    F.softmax: ATTN,
    torch.softmax: ATTN,
    torch.flatten: PASS,
    F.dropout: PASS,
}
_METHOD_KINDS = {
    "relu": ACT,
    "relu_": ACT,
    "sigmoid": ACT,
    "add": ADD,
    "add_": ADD,
    "softmax": ATTN,
    "flatten": PASS,
    "contiguous": PASS,
    "mean": POOL,
    "amax": POOL,
}


def module_kind(m: nn.Module) -> str:
    """What a module does when it runs as one operation."""
    for types, kind in _MODULE_KINDS:
        if isinstance(m, types):
            return kind
    if not list(m.children()) and _ACT_NAME.search(type(m).__name__):
        return ACT
    return OTHER


@dataclass
class Op:
    """One operation of the forward pass; ``index`` is its place in execution order."""

    index: int
    kind: str
    module: str | None  # the module that ran it as a whole (a leaf), None for a function
    scope: str  # innermost module it ran inside ('' = the model), the module itself if a leaf
    inputs: tuple[int, ...]  # the operations whose outputs it reads
    shape: tuple[int, ...] | None  # its output's shape, batch first; None: not one tensor
    cat_dim: int | None = None  # concatenation axis (cat only)


@dataclass
class Graph:
    """A model's forward pass at batch 1: operations and the modules that return them."""

    ops: list[Op]
    owners: dict[str, int]  # module path -> the op whose output the module returns
    calls: dict[str, int]  # module path -> how many times it ran in one forward pass
    traced: bool  # True: from torch.fx; False: from hooks (coarser)
    users: list[list[int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.users:
            self.users = [[] for _ in self.ops]
            for op in self.ops:
                for i in op.inputs:
                    self.users[i].append(op.index)

    def owned_by(self) -> dict[int, list[str]]:
        """op index -> the modules returning its output, outermost first."""
        out: dict[int, list[str]] = {}
        for path, i in self.owners.items():
            out.setdefault(i, []).append(path)
        for paths in out.values():
            paths.sort(key=lambda p: (p.count(".") if p else -1, p))
        return out

    def hookable(self, path: str) -> bool:
        """A module a forward hook captures unambiguously: it runs once and returns one op."""
        return path in self.owners and self.calls.get(path, 1) == 1


def scopes_of(path: str) -> list[str]:
    """Every module enclosing ``path`` (itself included), innermost first; '' last."""
    out = []
    while path:
        out.append(path)
        path = path.rpartition(".")[0]
    out.append("")
    return out


def inside(path: str, module: str) -> bool:
    """True when ``path`` is ``module`` or one of its submodules ('' holds everything)."""
    return module == "" or path == module or path.startswith(module + ".")


# ---------------------------------------------------------------------------------------------
# torch.fx


class TraceFailed(Exception):  # noqa: N818 - a reason to fall back to hooks
    """torch.fx could not trace the model."""


def _tracer(model: nn.Module) -> Any:
    """A torchvision NodePathTracer that also records each node's module scope, treating
    timm's untraceable modules and functions, and every activation module, as leaves."""
    from torchvision.models.feature_extraction import NodePathTracer

    leaf: list[type[nn.Module]] = []
    wrap: list[Callable[..., Any]] = []
    try:
        from timm.layers import _fx as timm_fx

        leaf += list(timm_fx.get_notrace_modules())
        wrap += list(timm_fx.get_notrace_functions())
    except ImportError:  # pragma: no cover - timm is a worker dependency
        pass
    leaf += list({type(m) for m in model.modules() if module_kind(m) == ACT})

    class ScopeTracer(NodePathTracer):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__(leaf_modules=leaf, autowrap_functions=wrap)
            self.scopes: dict[fx.Node, str] = {}

        def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None, *rest):  # type: ignore[no-untyped-def]
            proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, *rest)
            self.scopes[proxy.node] = self.current_module_qualname
            return proxy

    return ScopeTracer()


class _Shapes(fx.Interpreter):
    """Runs a traced graph and keeps each node's output shape (tensors only)."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.shapes: dict[fx.Node, tuple[int, ...]] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if isinstance(out, torch.Tensor):
            self.shapes[n] = tuple(out.shape)
        return out


def _node_kind(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "placeholder":
        return INPUT
    if node.op == "call_module":
        return module_kind(modules[str(node.target)])
    if node.op == "call_function":
        return _FUNCTION_KINDS.get(node.target, OTHER)
    if node.op == "call_method":
        return _METHOD_KINDS.get(str(node.target), OTHER)
    return OTHER


def _cat_dim(node: fx.Node) -> int | None:
    dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
    return dim if isinstance(dim, int) else None


def _flat_inputs(node: fx.Node) -> list[fx.Node]:
    """The nodes an operation reads, in argument order (lists of tensors flattened)."""
    out: list[fx.Node] = []

    def visit(a: object) -> None:
        if isinstance(a, fx.Node):
            out.append(a)
        elif isinstance(a, (list, tuple)):
            for b in a:
                visit(b)
        elif isinstance(a, dict):
            for b in a.values():
                visit(b)

    visit(node.args)
    visit(node.kwargs)
    return out


def trace_graph(model: nn.Module, x: torch.Tensor) -> Graph:
    """The traced graph of ``model`` run on ``x`` (batch 1); TraceFailed if fx cannot."""
    tracer = _tracer(model)
    try:
        fx_graph = tracer.trace(model)
        gm = fx.GraphModule(tracer.root, fx_graph)
        shapes = _Shapes(gm)
        with torch.no_grad():
            shapes.run(x)
    except Exception as e:  # any tracing or replay failure means: use hooks instead
        raise TraceFailed(f"{type(e).__name__}: {e}") from e
    modules = dict(model.named_modules())
    index: dict[fx.Node, int] = {}
    ops: list[Op] = []
    calls: dict[str, int] = {}
    for node in fx_graph.nodes:
        if node.op in ("output", "get_attr"):
            continue
        kind = _node_kind(node, modules)
        module = str(node.target) if node.op == "call_module" else None
        if module is not None:
            calls[module] = calls.get(module, 0) + 1
        i = len(ops)
        index[node] = i
        ops.append(
            Op(
                index=i,
                kind=kind,
                module=module,
                scope=module if module is not None else tracer.scopes.get(node, ""),
                inputs=tuple(index[a] for a in _flat_inputs(node) if a in index),
                shape=shapes.shapes.get(node),
                cat_dim=_cat_dim(node) if kind == CAT else None,
            )
        )
    results = [index[a] for n in fx_graph.nodes if n.op == "output" for a in _flat_inputs(n)]
    owners = _owners(ops, results)
    # A non-leaf module runs as many times as its forward is entered; fx inlines it, so count
    # the distinct leaf calls it makes per leaf: a module entered twice calls its leaves twice.
    for path in owners:
        if path not in calls:
            inner = [c for m, c in calls.items() if inside(m, path)]
            calls[path] = min(inner) if inner else 1
    return Graph(ops=ops, owners=owners, calls=calls, traced=True)


def _owners(ops: list[Op], results: list[int]) -> dict[str, int]:
    """module path -> its one output op: the op inside it that is read outside it (or is the
    model's result). Modules with no such op or several are left out."""
    readers: list[list[Op]] = [[] for _ in ops]
    for op in ops:
        for i in op.inputs:
            readers[i].append(op)
    outputs: dict[str, set[int]] = {}
    for op in ops:
        if op.kind == INPUT:
            continue
        for path in scopes_of(op.scope):
            if op.index in results or any(not inside(r.scope, path) for r in readers[op.index]):
                outputs.setdefault(path, set()).add(op.index)
    return {p: next(iter(s)) for p, s in outputs.items() if len(s) == 1}
