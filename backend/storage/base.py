"""The object-store interface and the key rules every backend shares."""

from __future__ import annotations

import hashlib
import json
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime
from typing import Any

_COMPONENT_RE = re.compile(r"^[A-Za-z0-9_.,=+\-]+$")
MAX_KEY_LEN = 1024


class InvalidKey(ValueError):
    """A key that could escape the store's root or is malformed."""


class NotFound(KeyError):
    """No object under that key."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str
    last_modified: datetime


def validate_key(key: str) -> str:
    """Return ``key`` if it is a safe relative key; raise InvalidKey otherwise.

    Components are restricted to [A-Za-z0-9_.,=+-], never '.' or '..', so no key can name a
    path outside the root on any backend.
    """
    if not key or len(key) > MAX_KEY_LEN or key.startswith("/") or key.endswith("/"):
        raise InvalidKey(f"invalid storage key {key!r}")
    for part in key.split("/"):
        if part in ("", ".", "..") or not _COMPONENT_RE.match(part):
            raise InvalidKey(f"invalid storage key {key!r}")
    return key


def _component(text: str) -> str:
    """Map arbitrary text (a layer name with slashes, say) into one safe key component."""
    out = re.sub(r"[^A-Za-z0-9_.,=+\-]", "_", text)
    if out in ("", ".", ".."):
        out = out.replace(".", "_") or "_"
    return out


def params_hash(params: dict[str, Any]) -> str:
    """A stable short hash of canonical JSON parameters."""
    blob = json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def artifact_key(
    model: str,
    layer: str | None,
    unit: int | None,
    kind: str,
    phash: str,
    ext: str,
    name: str | None = None,
) -> str:
    """Key for an artifact: derived from (model, layer, unit, kind, params hash)."""
    parts = [_component(model)]
    if layer is not None:
        parts.append(_component(layer))
    if unit is not None:
        parts.append(str(int(unit)))
    leaf = f"{_component(kind)}-{_component(phash)}"
    if name:
        leaf += f"-{_component(name)}"
    parts.append(f"{leaf}.{_component(ext)}")
    return validate_key("/".join(parts))


class ObjectStore(ABC):
    """Bytes under keys. ``put`` publishes whole: a reader never sees a partial object."""

    @abstractmethod
    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        """Store ``data`` under ``key`` atomically."""

    @abstractmethod
    def get(self, key: str) -> bytes:
        """The bytes under ``key``; NotFound if absent."""

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo:
        """Size, etag and modification time; NotFound if absent."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key`` (no error if absent)."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Keys under a prefix, sorted."""

    def exists(self, key: str) -> bool:
        try:
            self.stat(key)
        except NotFound:
            return False
        return True
