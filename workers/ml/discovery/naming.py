"""Layer and branch names: the module tree's, or the literature's where it has one.

Names are conventions, not rules: which layers are defaults never depends on them. Plain
convnets number their convolutions (AlexNet's conv1 ... conv5; VGG's conv1_1 ... conv5_4,
numbered within the blocks that pooling separates) and their fully connected layers after
them (fc6, fc7, fc8). torchvision's GoogLeNet is Lucid's InceptionV1, so its Inception
modules are shown with Microscope's names (mixed3a ... mixed5b) and their branches with the
Branch Specialization article's (mixed3b's 96-unit "5x5" branch is torchvision's branch3,
which uses a 3x3 kernel: a known difference from the paper).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from workers.ml.discovery.graph import POOL, Graph
from workers.ml.discovery.structure import Candidate


@dataclass(frozen=True)
class Convention:
    """How one architecture's layers are named in the literature."""

    rename: tuple[tuple[str, str], ...] = ()  # (regex, replacement) on a layer's module name
    branches: dict[str, str] = field(default_factory=dict)  # branch module -> branch name
    grouped_convs: bool = False  # conv{block}_{i} (VGG) rather than conv{i} (AlexNet)


# Keyed by the model class (torchvision's and timm's share these names).
CONVENTIONS = {
    "GoogLeNet": Convention(
        rename=((r"^inception(\d[a-e])$", r"mixed\1"),),
        branches={"branch1": "1x1", "branch2": "3x3", "branch3": "5x5", "branch4": "pool_reduce"},
    ),
    "VGG": Convention(grouped_convs=True),
}


def convention(model_class: str) -> Convention:
    """The naming convention of a model class (none: the module tree's names)."""
    return CONVENTIONS.get(model_class, Convention())


def branch_name(module_name: str, conv: Convention) -> str:
    """A branch's name from its module's: Inception v3's branch5x5_2 is '5x5', branch_pool
    'pool', branch3x3_2a '3x3_a'; a bare number (branch0) keeps its module name."""
    if module_name in conv.branches:
        return conv.branches[module_name]
    name = re.sub(r"^branch_?", "", module_name)
    name = re.sub(r"_\d+([a-z])$", r"_\1", name)
    name = re.sub(r"_\d+$", "", name)
    return module_name if not name or name.isdigit() else name


def unique(names: list[str]) -> list[str]:
    """Names made unique by numbering the repeats (3x3, 3x3_2)."""
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}_{seen[n]}")
    return out


def rename(name: str, conv: Convention) -> str:
    """A layer's module name after the convention's renames."""
    for pattern, repl in conv.rename:
        name = re.sub(pattern, repl, name)
    return name


def plain_names(graph: Graph, chosen: list[Candidate], conv: Convention) -> dict[int, str]:
    """op -> name for a plain convnet's conv and fully connected layers, numbered in order."""
    names: dict[int, str] = {}
    block, within, last = 1, 0, -1
    for c in chosen:
        if c.kind != "conv":
            continue
        pooled = any(op.kind == POOL for op in graph.ops[last + 1 : c.op]) and last >= 0
        if pooled and conv.grouped_convs:
            block, within = block + 1, 0
        within += 1
        names[c.op] = f"conv{block}_{within}" if conv.grouped_convs else f"conv{within}"
        last = c.op
    fc = (block if conv.grouped_convs else within) + 1
    for c in chosen:
        if (c.kind == "linear" and c.producer) or c.kind == "head":
            names[c.op] = f"fc{fc}"
            fc += 1
    return names
