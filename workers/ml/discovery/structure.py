"""Which module outputs hold units, read from the graph and the module tree.

Candidates, each the output of one module a forward hook can capture:

- conv units: a convolution's output after the norm and activation that directly follow it
  (the post-ReLU output, as Lucid and Microscope show conv layers);
- MLP hidden units: an activation right after a Linear, on tokens (ViT, Swin, CLIP) or on
  vectors (the fully connected layers of AlexNet and VGG);
- blocks and stages: the children of a Sequential/ModuleList of repeated multi-layer modules,
  grouped into stages by their output shape;
- mixed layers: a module whose output concatenates parallel branches on the channel axis
  (Inception modules, SqueezeNet's Fire), with each branch's share of the units;
- the pooled features, the classifier's logits, or (CLIP) the image embedding and the input
  of the attention pool.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from workers.ml.discovery.graph import (
    ACT,
    ADD,
    ATTN,
    CAT,
    CONV,
    LINEAR,
    NORM,
    PASS,
    POOL,
    Graph,
    Op,
    inside,
    module_kind,
)

_SEQUENCES = (nn.Sequential, nn.ModuleList)


@dataclass
class Candidate:
    """A module output with units, before naming conventions and defaults."""

    op: int  # the graph op it captures (execution order)
    path: str  # module path to hook ('' = the model's own output)
    name: str  # name from the module tree (conventions may rename it)
    kind: str  # stem | conv | block | stage | mixed | mlp | attnpool_input | linear | head
    shape: tuple[int, ...]  # output shape, batch first
    channels_last: bool = False  # a 4-D output whose last axis holds the channels (Swin)
    parts: list[tuple[str, int, int]] = field(default_factory=list)  # (part op, start, stop)
    parallel: bool = False  # mixed: every part is computed inside the module from its input
    producer: str | None = None  # conv units: the conv (or Linear) module that makes them


@dataclass
class Structure:
    """A model's unit candidates and what it is made of."""

    candidates: list[Candidate]  # in execution order; several may share one output
    stages: list[list[str]]  # block paths of each stage group (same output shape), in order
    depthwise_blocks: bool  # some block holds a depthwise convolution (inverted residuals)
    attention: bool  # some block holds an attention operation (transformers)
    part_names: dict[tuple[str, int], str]  # (mixed layer path, part op) -> module-given name


# ---------------------------------------------------------------------------------------------
# Module tree: blocks and stages


def _heavy(m: nn.Module) -> int:
    """Convolutions, linears and attentions inside ``m`` (itself included)."""
    return sum(1 for x in m.modules() if module_kind(x) in (CONV, LINEAR, ATTN))


def _deep(m: nn.Module) -> bool:
    """A module doing more than one layer's work (a block, not conv-norm-act)."""
    return _heavy(m) >= 2


def _stage_like(m: nn.Module) -> bool:
    """A Sequential/ModuleList of at least two deep modules."""
    return isinstance(m, _SEQUENCES) and sum(_deep(c) for c in m.children()) >= 2


def _holds_stage(m: nn.Module) -> bool:
    return any(_stage_like(x) for x in m.modules())


def find_stages(model: nn.Module) -> dict[str, list[str]]:
    """stage path -> its block paths: sequences of deep modules holding no such sequence
    themselves. A sequence of one block counts when its siblings are stages (a one-block
    stage of an EfficientNet)."""
    stages: dict[str, list[str]] = {}

    def visit(prefix: str, m: nn.Module) -> None:
        kids = list(m.named_children())
        siblings_are_stages = isinstance(m, _SEQUENCES) and any(_stage_like(c) for _, c in kids)
        for name, child in kids:
            path = f"{prefix}{name}"
            deep = [(n, c) for n, c in child.named_children() if _deep(c)]
            is_stage = (
                isinstance(child, _SEQUENCES)
                and deep
                and not any(_holds_stage(c) for _, c in deep)
                and (len(deep) >= 2 or siblings_are_stages)
            )
            if is_stage:
                stages[path] = [f"{path}.{n}" for n, _ in deep]
            elif _holds_stage(child) or (isinstance(child, _SEQUENCES) and siblings_are_stages):
                visit(f"{path}.", child)

    visit("", model)
    return stages


# ---------------------------------------------------------------------------------------------
# Graph helpers


def _single_user(graph: Graph, i: int) -> Op | None:
    users = graph.users[i]
    return graph.ops[users[0]] if len(users) == 1 else None


def _chain(graph: Graph, start: int) -> list[int]:
    """``start`` and the norms / pass-throughs after it, ending at the activation if one
    directly follows: the ops whose output is still 'this layer's units'."""
    out = [start]
    shape = graph.ops[start].shape
    while True:
        nxt = _single_user(graph, out[-1])
        if nxt is None or nxt.shape != shape or nxt.kind not in (NORM, PASS, ACT):
            break
        out.append(nxt.index)
        if nxt.kind == ACT:
            break
    while len(out) > 1 and graph.ops[out[-1]].kind == PASS:
        out.pop()  # identities and dropouts repeat the values before them
    return out


def _channels_last(graph: Graph, i: int) -> bool:
    """A 4-D output computed by Linear layers (tokens on a grid), not by convolutions."""
    seen, todo = set(), [i]
    while todo:
        op = graph.ops[todo.pop()]
        if op.index in seen:
            continue
        seen.add(op.index)
        if op.kind == CONV:
            return False
        if op.kind == LINEAR:
            return True
        if op.kind in (NORM, ACT, PASS, ADD, POOL, "other"):
            todo.extend(op.inputs)
    return False


class _Owners:
    """Which hookable modules return each op."""

    def __init__(self, graph: Graph, modules: dict[str, nn.Module]) -> None:
        self.graph = graph
        self.modules = modules
        owned = graph.owned_by()
        self.by_op = {
            i: [p for p in paths if p and graph.hookable(p)] for i, paths in owned.items()
        }

    def of(self, i: int) -> list[str]:
        """Hookable modules (never the model itself) returning op ``i``, outermost first."""
        return self.by_op.get(i, [])

    def is_pass_leaf(self, path: str) -> bool:
        m = self.modules[path]
        return not list(m.children()) and module_kind(m) in (PASS, ACT, NORM)


# ---------------------------------------------------------------------------------------------
# Candidates


def _conv_units(graph: Graph, own: _Owners) -> list[Candidate]:
    out = []
    for op in graph.ops:
        if op.kind != CONV or op.shape is None or len(op.shape) != 4:
            continue
        conv = op.module or op.scope
        chain = _chain(graph, op.index)
        for i in reversed(chain):
            owners = own.of(i)
            if not owners:
                continue
            holding = [p for p in owners if inside(conv, p)]
            path = holding[-1] if holding else owners[0]
            # Named after the conv, or after the conv-norm-act module that wraps it.
            alone = holding and _heavy(own.modules[path]) == 1
            out.append(Candidate(i, path, path if alone else conv, "conv", op.shape,
                                 producer=conv))
            break
    return out


def _mlp_units(graph: Graph, own: _Owners) -> list[Candidate]:
    out = []
    for op in graph.ops:
        if op.kind != ACT or op.shape is None or len(op.inputs) != 1:
            continue
        src = graph.ops[op.inputs[0]]
        if src.kind != LINEAR:
            continue
        owners = own.of(op.index) or own.of(src.index)
        if not owners:
            continue
        path = owners[-1]
        linear = src.module or src.scope
        if len(op.shape) == 2:  # a fully connected layer's units: named after its Linear
            out.append(Candidate(op.index, path, linear, "linear", op.shape, producer=linear))
            continue
        # Hidden units of a transformer MLP, named after the MLP module (its act's parent).
        name = path.rpartition(".")[0] if own.is_pass_leaf(path) else path
        out.append(Candidate(op.index, path, name, "mlp", op.shape,
                             channels_last=len(op.shape) == 4, producer=linear))
    return out


def _flat_parts(graph: Graph, cat: Op, owner: str, own: _Owners) -> list[Op]:
    """The ops a concatenation lays side by side, through inner concatenations that no
    submodule returns (Inception v3's split 3x3 branches)."""
    parts: list[Op] = []
    for i in cat.inputs:
        op = graph.ops[i]
        inner = op.kind == CAT and op.cat_dim in (1, -3) and inside(op.scope, owner)
        if inner and not [p for p in own.of(i) if p != owner]:
            parts += _flat_parts(graph, op, owner, own)
        else:
            parts.append(op)
    return parts


def _mixed(graph: Graph, own: _Owners) -> tuple[list[Candidate], dict[tuple[str, int], str]]:
    out, names = [], {}
    for op in graph.ops:
        if op.kind != CAT or op.cat_dim not in (1, -3) or not op.shape or len(op.shape) != 4:
            continue
        # The module whose own forward concatenates (not a Sequential that ends with it).
        owners = [p for p in own.of(op.index) if inside(op.scope, p)]
        if not owners:
            continue  # a concatenation inside a layer (DenseNet's inputs), not its output
        path = owners[-1]
        parts = _flat_parts(graph, op, path, own)
        if len(parts) < 2 or any(p.shape is None or len(p.shape) != 4 for p in parts):
            continue
        spans, at = [], 0
        for p in parts:
            assert p.shape is not None
            spans.append((p.index, at, at + p.shape[1]))
            at += p.shape[1]
        if at != op.shape[1]:
            continue
        parallel = all(inside(p.scope, path) for p in parts)
        for p in parts:
            names[(path, p.index)] = _part_name(graph, own, p, path)
        out.append(Candidate(op.index, path, path, "mixed", op.shape,
                             parts=[(str(i), a, b) for i, a, b in spans], parallel=parallel))
    return out, names


def _part_name(graph: Graph, own: _Owners, part: Op, owner: str) -> str:
    """A part's module name relative to its mixed layer: the module returning it, or the
    convolution an activation finishes; 'input' for the layer's own input passed through,
    else the op's kind (a functional max-pool: 'pool')."""
    if not inside(part.scope, owner):
        return "input"
    cur = part
    while True:
        mine = [p for p in own.of(cur.index) if p != owner and inside(p, owner)]
        named = [p for p in mine if not own.is_pass_leaf(p)]
        if named:
            return named[0][len(owner) + 1 :]
        if cur.kind in (CONV, LINEAR) and cur.module and cur.module != owner:
            return cur.module[len(owner) + 1 :]
        if cur.kind not in (ACT, NORM, PASS) or len(cur.inputs) != 1:
            return part.kind
        cur = graph.ops[cur.inputs[0]]
        if not inside(cur.scope, owner):
            return part.kind


def _blocks(
    graph: Graph, own: _Owners, stages: dict[str, list[str]]
) -> tuple[list[Candidate], list[list[str]]]:
    """Block outputs, and stage outputs: each run of blocks with the same output shape."""
    out, groups = [], []
    for stage, blocks in stages.items():
        shaped = []
        for b in blocks:
            i = graph.owners.get(b)
            if i is None or not graph.hookable(b) or graph.ops[i].shape is None:
                continue
            shape = graph.ops[i].shape
            assert shape is not None
            shaped.append((b, i, shape))
            out.append(Candidate(i, b, b, "block", shape,
                                 channels_last=len(shape) == 4 and _channels_last(graph, i)))
        run: list[tuple[str, int, tuple[int, ...]]] = []
        for item in [*shaped, None]:
            if item is not None and (not run or run[-1][2] == item[2]):
                run.append(item)
                continue
            if run:
                groups.append([b for b, _, _ in run])
                last = run[-1]
                name = last[0]
                if len(run) == len(shaped):
                    # The outermost module returning the stage's output that holds no other
                    # stage (ConvNeXt's stages.0 rather than stages.0.blocks).
                    alone = [
                        p
                        for p in own.of(last[1])
                        if inside(stage, p) and not any(inside(o, p) for o in stages if o != stage)
                    ]
                    name = alone[0] if alone else name
                out.append(Candidate(last[1], name, name, "stage", last[2],
                                     channels_last=out[-1].channels_last))
            run = [item] if item is not None else []
    return out, groups


def _before_passes(graph: Graph, op: Op) -> Op:
    """The op whose values ``op`` repeats through identities, dropouts and flattening."""
    while op.kind == PASS and len(op.inputs) == 1:
        op = graph.ops[op.inputs[0]]
    return op


def _attnpool_input(graph: Graph, own: _Owners, pool: str) -> Candidate | None:
    """The one map an attention-pooling module (CLIP's ResNets) reads from outside itself."""
    body = _inside(graph, pool)
    named = "Attention" in type(own.modules[pool]).__name__  # functional attention, unseen
    if not named and not any(graph.ops[i].kind == ATTN for i in body):
        return None
    read = {
        i
        for j in body
        for i in graph.ops[j].inputs
        if not inside(graph.ops[i].scope, pool) and len(graph.ops[i].shape or ()) == 4
    }
    if len(read) != 1:
        return None
    i = read.pop()
    shape = graph.ops[i].shape
    paths = own.of(i)
    if not paths or shape is None:
        return None
    return Candidate(i, paths[0], "attnpool_input", "attnpool_input", shape)


def _top(graph: Graph, own: _Owners, clip: bool) -> list[Candidate]:
    """The model's output (a classifier's logits, or CLIP's image embedding), the pooled
    features a classifier reads, and the map CLIP's attention pool reads."""
    result = graph.owners.get("")
    if result is None or graph.ops[result].shape is None:
        return []
    op = graph.ops[result]
    assert op.shape is not None
    core = _before_passes(graph, op)
    if clip or core.kind != LINEAR:
        owners = own.of(result)
        path = owners[0] if owners else ""  # '' hooks the model itself
        out = [Candidate(result, path, "embedding", "linear", op.shape)]
        found = _attnpool_input(graph, own, path) if path else None
        return out + ([found] if found else [])
    head_owners = own.of(core.index)
    path = head_owners[-1] if head_owners else ""
    out = [Candidate(core.index, path, core.module or path or "output", "head", op.shape)]
    # Walk back from the classifier through pooling and flattening to the pooled features.
    cur = graph.ops[core.inputs[0]] if core.inputs else None
    while cur is not None:
        found_paths = [p for p in own.of(cur.index) if not own.is_pass_leaf(p)]
        shape = cur.shape
        spatial = shape is not None and len(shape) == 4 and shape[2] * shape[3] > 1
        if found_paths and shape is not None and not spatial:
            out.append(Candidate(cur.index, found_paths[0], found_paths[0], "linear", shape))
            break
        if cur.kind not in (PASS, POOL) or len(cur.inputs) != 1:
            break
        cur = graph.ops[cur.inputs[0]]
    return out


def _inside(graph: Graph, path: str) -> list[int]:
    return [op.index for op in graph.ops if inside(op.scope, path)]


def analyse(graph: Graph, model: nn.Module, *, clip: bool = False) -> Structure:
    """Every unit candidate of ``model`` and its building blocks; candidates may share an
    output (a stage and its last block): the default rule decides which one names it."""
    modules = dict(model.named_modules())
    own = _Owners(graph, modules)
    stages = find_stages(model)
    mixed, part_names = _mixed(graph, own)
    blocks, groups = _blocks(graph, own, stages)
    found = _conv_units(graph, own) + _mlp_units(graph, own) + mixed + blocks
    found += _top(graph, own, clip)
    block_paths = [b for bs in stages.values() for b in bs]
    inner = [m for b in block_paths for m in modules[b].modules()]
    depthwise = any(
        isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels for m in inner
    )
    attention = any(module_kind(m) == ATTN or "Attention" in type(m).__name__ for m in inner)
    attention = attention or any(
        graph.ops[i].kind == ATTN for b in block_paths for i in _inside(graph, b)
    )
    return Structure(
        candidates=sorted((c for c in found if len(c.shape) >= 2), key=lambda c: c.op),
        stages=groups,
        depthwise_blocks=depthwise,
        attention=attention,
        part_names=part_names,
    )
