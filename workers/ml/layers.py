"""Which layers of a model hold browsable units, found from its structure
(:mod:`workers.ml.discovery`), for a loaded model spec."""

from __future__ import annotations

from typing import Any

from workers.ml.discovery import Discovery, LayerInfo, discover
from workers.ml.models import LoadedModel, load_model

__all__ = ["LayerInfo", "discover_layers", "enumerate_layers", "inspect_model"]


def _declared_stages(model: Any) -> list[str]:
    """The stage modules a timm model declares in its feature_info (none elsewhere)."""
    info = getattr(model, "feature_info", None)
    if not isinstance(info, (list, tuple)):
        return []
    return [str(f["module"]) for f in info if isinstance(f, dict) and "module" in f]


def discover_layers(loaded: LoadedModel) -> Discovery:
    """Every layer with units of a loaded model, the rule that chose its defaults."""
    clip = loaded.spec.startswith("open_clip:")
    return discover(
        loaded.image_model,
        loaded.preprocess.input_size,
        clip=clip,
        declared=_declared_stages(loaded.image_model),
        prefix="visual." if clip else "",
    )


def enumerate_layers(loaded: LoadedModel, *, all_layers: bool = False) -> list[LayerInfo]:
    """The layers with units, in execution order (only the default set unless asked)."""
    layers = discover_layers(loaded).layers
    return layers if all_layers else [i for i in layers if i.default]


def inspect_model(spec: str, *, all_layers: bool = False) -> dict[str, Any]:
    """JSON-able summary of a model and its layers (for `microscope models inspect`)."""
    loaded = load_model(spec)
    found = discover_layers(loaded)
    layers = found.layers if all_layers else [i for i in found.layers if i.default]
    return {
        "spec": loaded.spec,
        "family": loaded.family,
        "rule": found.rule,
        "traced": found.traced,
        "pretrained": loaded.pretrained,
        "checksum": loaded.checksum,
        "preprocess": loaded.preprocess.to_dict(),
        "layers": [layer.to_dict() for layer in layers],
        "total_units": sum(layer.unit_count for layer in layers),
    }
