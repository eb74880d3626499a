"""Object storage: one interface, a local directory or an S3-compatible bucket."""

from backend.storage.base import (
    InvalidKey,
    NotFound,
    ObjectInfo,
    ObjectStore,
    artifact_key,
    params_hash,
    validate_key,
)
from backend.storage.factory import make_store

__all__ = [
    "InvalidKey",
    "NotFound",
    "ObjectInfo",
    "ObjectStore",
    "artifact_key",
    "make_store",
    "params_hash",
    "validate_key",
]
