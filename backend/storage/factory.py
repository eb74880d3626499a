"""Build the store that STORAGE_URL names."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from backend.config import Settings
from backend.storage.base import ObjectStore


def make_store(settings: Settings) -> ObjectStore:
    """``file:///path`` (or a bare path) -> LocalStore; ``s3://bucket/prefix`` -> S3Store."""
    url = settings.storage_url
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        from backend.storage.local import LocalStore

        return LocalStore(Path(parsed.path if parsed.scheme else url))
    if parsed.scheme == "s3":
        from backend.storage.s3 import S3Store

        return S3Store(
            parsed.netloc,
            parsed.path,
            endpoint_url=settings.s3_endpoint_url,
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key,
            region=settings.s3_region,
        )
    raise ValueError(f"unsupported MICROSCOPE_STORAGE_URL scheme {parsed.scheme!r}")
