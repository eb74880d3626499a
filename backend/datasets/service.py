"""Datasets: record an image folder and queue its import."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sqlalchemy.orm import Session

from backend.config import get_settings
from backend.datasets.repository import DatasetRepository
from backend.datasets.schemas import DatasetOut
from backend.db.models import Dataset, Job
from backend.errors import InvalidInput, NotFoundError
from backend.jobs.service import enqueue_job
from backend.redact import scrub
from contracts.jobs import ImportDatasetParams
from contracts.spec import slugify


def list_datasets(session: Session) -> Sequence[Dataset]:
    return DatasetRepository(session).list_datasets()


def get_dataset(session: Session, slug: str) -> Dataset:
    ds = DatasetRepository(session).get(slug)
    if ds is None:
        raise NotFoundError("dataset", slug)
    return ds


def check_dataset_folder(path: str, roots: Sequence[Path]) -> Path:
    """The folder, resolved (symlinks followed), if it is one under a dataset root; whether it
    exists is only said for folders under a root (no probing of the server's file system)."""
    try:
        folder = Path(path).expanduser().resolve()
    except (RuntimeError, ValueError, OSError):  # "~nobody" (no such user), a NUL byte, ...
        folder = None
    if folder is None or not any(folder.is_relative_to(root) for root in roots):
        raise InvalidInput(
            "dataset folders must be under a dataset root (the MICROSCOPE_DATASET_ROOTS "
            "setting); this one is not"
        )
    if not folder.is_dir():
        raise InvalidInput(f"dataset folder {str(folder)!r} does not exist or is not a folder")
    return folder


def add_dataset(
    session: Session,
    path: str,
    slug: str | None = None,
    roots: Sequence[Path] | None = None,
) -> tuple[Dataset, Job]:
    """Record an image folder and queue its import (validation and thumbnails).

    The folder must lie under one of ``roots`` (default: the DATASET_ROOTS setting), checked
    after symlinks are resolved and before anything is said about whether it exists.
    """
    folder = check_dataset_folder(path, get_settings().dataset_roots if roots is None else roots)
    slug = slugify(slug or folder.name) or "dataset"
    repo = DatasetRepository(session)
    ds = repo.get(slug)
    if ds is None:
        ds = repo.add(Dataset(slug=slug, source=str(folder), state="pending"))
    elif ds.source != str(folder):
        raise InvalidInput(f"dataset slug {slug!r} already names {ds.source}")
    job = enqueue_job(
        session,
        ImportDatasetParams(dataset_id=ds.id, source=ds.source),
        queue="cpu",
        priority=8,
        dataset_id=ds.id,
    )
    return ds, job


def dataset_out(ds: Dataset) -> DatasetOut:
    return DatasetOut(
        slug=ds.slug,
        source=scrub(ds.source) or "",
        image_count=ds.image_count,
        skipped_count=ds.skipped_count,
        skipped=ds.skipped,
        checksum=ds.checksum,
        state=ds.state,
        error=scrub(ds.error),
    )
