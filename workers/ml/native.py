"""Each architecture's own preprocessing and class names, read from its source's metadata.

timm models carry a data config; torchvision weights carry their transforms (resize, crop,
mean, std, interpolation) and their categories; open_clip towers carry a preprocess config.
A model at random init is fed as its architecture's default weights would be. Class names
only label a trained head: from the weights' metadata where there is some, else from the
head's size (1000: ImageNet-1k, timm's larger heads: its ImageNet subsets).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from contracts.spec import ModelSpec

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Where a source says nothing: torchvision's classic ImageNet evaluation transform.
FALLBACK: dict[str, Any] = {
    "input_size": 224,
    "mean": IMAGENET_MEAN,
    "std": IMAGENET_STD,
    "interpolation": "bilinear",
    "crop_pct": 0.875,
}


def _interpolation(name: object) -> str:
    return "bicubic" if "bicubic" in str(name).lower() else "bilinear"


def _triple(values: Any) -> tuple[float, float, float]:
    a, b, c = (float(v) for v in values)
    return a, b, c


def _torchvision_weights(ms: ModelSpec) -> Any | None:
    """The weights enum entry a spec names, or the architecture's default one."""
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(ms.name)
    except (ValueError, KeyError):
        return None
    tag = ms.weights
    if tag and not ms.is_local_checkpoint and not tag.startswith("pypi:"):
        return enum[tag] if tag != "DEFAULT" else enum.DEFAULT
    return enum.DEFAULT


def preprocess_for(ms: ModelSpec, image_model: nn.Module) -> dict[str, Any]:
    """input_size, mean, std, interpolation and crop_pct the architecture was trained with."""
    if ms.source == "timm":
        from timm.data import resolve_data_config

        cfg = resolve_data_config({}, model=image_model)
        return {
            "input_size": int(cfg["input_size"][-1]),
            "mean": _triple(cfg["mean"]),
            "std": _triple(cfg["std"]),
            "interpolation": _interpolation(cfg["interpolation"]),
            "crop_pct": float(cfg["crop_pct"]),
        }
    if ms.source == "open_clip":
        from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

        cfg = dict(getattr(image_model, "preprocess_cfg", None) or {})
        size = cfg.get("size", image_model.image_size)
        side = int(size[0] if isinstance(size, (tuple, list)) else size)
        # CLIP was trained on a resize-to-side plus center crop: no extra margin.
        return {
            "input_size": side,
            "mean": _triple(cfg.get("mean", OPENAI_DATASET_MEAN)),
            "std": _triple(cfg.get("std", OPENAI_DATASET_STD)),
            "interpolation": _interpolation(cfg.get("interpolation", "bicubic")),
            "crop_pct": 1.0,
        }
    weights = _torchvision_weights(ms)
    if weights is None:
        return dict(FALLBACK)
    t = weights.transforms()
    crop, resize = int(t.crop_size[0]), int(t.resize_size[0])
    return {
        "input_size": crop,
        "mean": _triple(t.mean),
        "std": _triple(t.std),
        "interpolation": _interpolation(t.interpolation),
        "crop_pct": crop / resize,
    }


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet class names in index order (shipped with torchvision)."""
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    return list(_IMAGENET_CATEGORIES)


def head_size(image_model: nn.Module) -> int | None:
    """How many outputs the classifier head has (None: no linear head)."""
    n = getattr(image_model, "num_classes", None)
    if isinstance(n, int) and n > 0:
        return n
    last = [m for m in image_model.modules() if isinstance(m, nn.Linear)]
    return last[-1].out_features if last else None


def class_names_for(ms: ModelSpec, image_model: nn.Module, pretrained: bool) -> list[str] | None:
    """Names of the head's classes, in index order; None for CLIP and random heads."""
    if ms.source == "open_clip" or not pretrained:
        return None
    n = head_size(image_model)
    if ms.source == "torchvision":
        weights = _torchvision_weights(ms)
        categories = list((weights.meta if weights is not None else {}).get("categories") or [])
        if categories and len(categories) == n:
            return categories
    if n == 1000:
        return imagenet_class_names()
    if ms.source == "timm" and n:
        from timm.data import ImageNetInfo, infer_imagenet_subset

        subset = infer_imagenet_subset(image_model)
        if subset:
            names = ImageNetInfo(subset).label_descriptions()
            if len(names) == n:
                return [str(d).split(",")[0].strip() for d in names]
    return None
