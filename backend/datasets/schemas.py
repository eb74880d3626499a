"""API shapes for datasets."""

from __future__ import annotations

from pydantic import BaseModel

from backend.jobs.schemas import JobOut


class DatasetOut(BaseModel):
    slug: str
    source: str
    image_count: int
    skipped_count: int
    skipped: dict[str, int] | None
    checksum: str | None
    state: str
    error: str | None


class DatasetCreate(BaseModel):
    path: str
    slug: str | None = None


class DatasetCreated(BaseModel):
    """A dataset recorded for import, and the job that imports it."""

    dataset: DatasetOut
    job: JobOut
