"""Which layers of a model hold browsable units: found by one dry forward pass with hooks."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from contracts.layout import Layout
from workers.ml.hooks import capture
from workers.ml.models import LoadedModel, load_model

# Pooled-feature modules at the top of an image model (timm, torchvision, open_clip).
_POOL_PATHS = ("global_pool", "avgpool", "fc_norm", "attnpool")
# Classifier modules whose output is the logits.
_HEAD_PATHS = ("fc", "classifier", "head", "head.fc", "heads.head", "classifier.1")
# When two candidates output the very same tensor, the higher priority one names it.
_PRIORITY = {"attnpool_input": 5, "mlp": 4, "head": 1, "linear": 1, "conv": 2, "stem": 2}


@dataclass
class LayerInfo:
    """A layer whose output channels (or hidden units) are browsable units."""

    name: str  # display name, e.g. "blocks.3" or "visual.transformer.resblocks.5.mlp"
    module_path: str  # path inside image_model
    kind: str  # conv | block | stage | mlp | attnpool_input | linear | stem | head
    unit_count: int
    output_shape: list[int]  # raw module output without the batch axis
    layout: Layout
    order: int  # forward execution order
    default: bool

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
        }


def _is_leafish(m: nn.Module) -> bool:
    """A module without submodules, or a plain Sequential of such (conv-norm-act)."""
    children = list(m.children())
    return not children or (
        isinstance(m, nn.Sequential) and all(not list(c.children()) for c in children)
    )


def _is_stage(m: nn.Module) -> bool:
    """A Sequential/ModuleList of blocks (each block having submodules of its own)."""
    children = list(m.children())
    return (
        isinstance(m, (nn.Sequential, nn.ModuleList))
        and bool(children)
        and all(not _is_leafish(c) for c in children)
        and not all(_is_stage(c) for c in children)
    )


def _conv_candidates(model: nn.Module) -> dict[str, str]:
    """path -> kind for stems, stages, blocks and top-level convs of a convnet."""
    found: dict[str, str] = {}

    def visit(prefix: str, m: nn.Module) -> None:
        for name, child in m.named_children():
            path = f"{prefix}{name}"
            if _is_stage(child):
                found[path] = "stage"
                for bname, _ in child.named_children():
                    found[f"{path}.{bname}"] = "block"
            elif isinstance(child, (nn.Sequential, nn.ModuleList)) and not _is_leafish(child):
                visit(f"{path}.", child)  # a container of stages (timm `blocks`, tv `features`)
            elif isinstance(child, nn.Conv2d) or (
                isinstance(child, nn.Sequential) and _is_leafish(child)
            ):
                found[path] = "conv"

    visit("", model)
    return found


def _mlp_candidates(model: nn.Module) -> dict[str, str]:
    """path -> 'mlp' for the hidden activation inside every transformer block's MLP."""
    found: dict[str, str] = {}
    for path, m in model.named_modules():
        if not path.endswith("mlp"):
            continue
        for cname, child in m.named_children():
            if cname in ("act", "gelu") or "GELU" in type(child).__name__:
                found[f"{path}.{cname}"] = "mlp"
                break
    return found


def _top_candidates(model: nn.Module, family: str) -> dict[str, str]:
    """Pooled features and logits: kind 'linear' / 'head'."""
    modules = dict(model.named_modules())
    found = {p: "linear" for p in _POOL_PATHS if p in modules}
    found.update({p: "head" for p in _HEAD_PATHS if isinstance(modules.get(p), nn.Linear)})
    if family == "clip_vit":
        found[""] = "linear"  # the projected image embedding (proj is a parameter, not a module)
    return found


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


def _layout(model: nn.Module, t: torch.Tensor, kind: str) -> tuple[Layout, list[int], int]:
    """Layout, output shape without batch, unit count for a batch-1 output."""
    if kind == "mlp" and t.dim() == 3:
        # With batch 1 the batch axis is whichever axis has size 1 (L > 1 always).
        if t.shape[0] == 1:
            lay = Layout("nlc", _prefix_tokens(model, t.shape[1]))
            shape = list(t.shape[1:])
        else:
            lay = Layout("lnc", _prefix_tokens(model, t.shape[0]))
            shape = [t.shape[0], t.shape[2]]
        return lay, shape, int(t.shape[-1])
    if t.dim() == 4:
        if kind in ("linear", "head"):
            return Layout("nc"), list(t.shape[1:]), int(t[0].numel())
        return Layout("nchw"), list(t.shape[1:]), int(t.shape[1])
    return Layout("nc"), list(t.shape[1:]), int(t[0].numel())


def _is_default(
    info: LayerInfo, family: str, stage_blocks: dict[str, list[str]], has_stages: bool
) -> bool:
    if info.kind == "attnpool_input" or info.kind == "mlp":
        return True
    if family == "efficientnet":
        return info.kind == "stage" or info.name.endswith("conv_head") or info.name == "features.8"
    if family == "resnet":
        return info.kind == "block"
    if family == "clip_resnet":
        stage, _, _ = info.module_path.rpartition(".")
        blocks = stage_blocks.get(stage, [])
        if info.kind == "block" and stage == "layer4":
            return True
        return info.kind == "block" and bool(blocks) and info.module_path == blocks[-1]
    if family in ("vit", "clip_vit"):
        return False
    # Unknown convnets: stage outputs, or block outputs where stages are not Sequentials.
    return info.kind == ("stage" if has_stages else "block")


def enumerate_layers(loaded: LoadedModel, *, all_layers: bool = False) -> list[LayerInfo]:
    """The layers with units, in execution order (only the family's default set unless asked)."""
    model = loaded.image_model
    family = loaded.family
    if family in ("vit", "clip_vit"):
        candidates = _mlp_candidates(model)
    else:
        candidates = _conv_candidates(model)
        if family == "clip_resnet" and "layer4" in candidates:
            # CLIP's penultimate units: the attention pool reads layer4's output.
            candidates["layer4"] = "attnpool_input"
    candidates.update(_top_candidates(model, family))

    prefer_stage = family == "efficientnet"
    priority = dict(_PRIORITY, stage=3 if prefer_stage else 2, block=2 if prefer_stage else 3)
    stage_blocks: dict[str, list[str]] = {}
    for path, kind in candidates.items():
        if kind == "block":
            stage_blocks.setdefault(path.rpartition(".")[0], []).append(path)

    device = next(model.parameters()).device
    size = loaded.preprocess.input_size
    x = torch.zeros(1, 3, size, size, device=device)  # (1, 3, S, S)
    with torch.no_grad(), capture(model, list(candidates)) as store:
        model(x)
        fired = list(store.items())  # insertion order = order in which outputs were produced

    # The same tensor may come out of a stage and its last block: keep one name for it.
    by_tensor: dict[tuple[int, tuple[int, ...]], str] = {}
    for path, t in fired:
        if t.dim() < 2:
            continue
        key = (t.data_ptr(), tuple(t.shape))
        other = by_tensor.get(key)
        if other is None or priority[candidates[path]] > priority[candidates[other]]:
            by_tensor[key] = path
    keep = set(by_tensor.values())

    prefix = "visual." if loaded.spec.startswith("open_clip:") else ""
    infos: list[LayerInfo] = []
    for path, t in fired:
        if path not in keep:
            continue
        kind = candidates[path]
        if kind in ("stage", "block", "conv", "attnpool_input") and t.dim() != 4:
            continue  # a channels-last or flattened block: not a conv unit layer
        if kind == "linear" and t.dim() == 4 and t.shape[2] * t.shape[3] != 1:
            continue  # a spatial pooling inside the stem (CLIP ResNet's avgpool), not a vector
        layout, shape, units = _layout(model, t, kind)
        if kind == "conv" and not any(i.kind in ("stage", "block") for i in infos):
            kind = "stem"
        display = path[: -len(".gelu")] if path.endswith(".mlp.gelu") else path
        display = display[: -len(".act")] if display.endswith(".mlp.act") else display
        if kind == "attnpool_input":
            display = "attnpool_input"
        elif path == "":
            display = "embedding"
        info = LayerInfo(
            name=f"{prefix}{display}",
            module_path=path,
            kind=kind,
            unit_count=units,
            output_shape=shape,
            layout=layout,
            order=len(infos),
            default=False,
        )
        infos.append(info)
    has_stages = any(i.kind == "stage" for i in infos)
    for info in infos:
        info.default = _is_default(info, family, stage_blocks, has_stages)
    return infos if all_layers else [i for i in infos if i.default]


def inspect_model(spec: str, *, all_layers: bool = False) -> dict[str, Any]:
    """JSON-able summary of a model and its layers (for `microscope models inspect`)."""
    loaded = load_model(spec)
    layers = enumerate_layers(loaded, all_layers=all_layers)
    return {
        "spec": loaded.spec,
        "family": loaded.family,
        "pretrained": loaded.pretrained,
        "checksum": loaded.checksum,
        "preprocess": loaded.preprocess.to_dict(),
        "layers": [layer.to_dict() for layer in layers],
        "total_units": sum(layer.unit_count for layer in layers),
    }
