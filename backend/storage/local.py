"""A local directory as object store (the embedded default)."""

from __future__ import annotations

import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from backend.storage.base import InvalidKey, NotFound, ObjectInfo, ObjectStore, validate_key


class LocalStore(ObjectStore):
    """Objects are files under ``root``; writes go to a temp file then ``os.replace``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        """The file for ``key``, guaranteed to lie inside the root (symlinks resolved)."""
        validate_key(key)
        p = (self.root / key).resolve()
        if self.root != p and self.root not in p.parents:
            raise InvalidKey(f"key {key!r} escapes the store root")
        return p

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        p = self.path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=".tmp-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, p)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError) as e:
            raise NotFound(key) from e

    def stat(self, key: str) -> ObjectInfo:
        p = self.path(key)
        try:
            st = p.stat()
        except FileNotFoundError as e:
            raise NotFound(key) from e
        if not p.is_file():
            raise NotFound(key)
        etag = f"{st.st_size:x}-{st.st_mtime_ns:x}"
        return ObjectInfo(key, st.st_size, etag, datetime.fromtimestamp(st.st_mtime, UTC))

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def list(self, prefix: str = "") -> list[str]:
        keys = []
        for p in self.root.rglob("*"):
            if p.is_file() and not p.name.startswith(".tmp-"):
                k = p.relative_to(self.root).as_posix()
                if k.startswith(prefix):
                    keys.append(k)
        return sorted(keys)
