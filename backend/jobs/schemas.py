"""API shape of a job."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, field_validator

from backend.db.models import Job
from backend.redact import scrub, scrub_values
from contracts.jobs import JobState


class JobOut(BaseModel):
    id: int
    kind: str
    state: str
    params: dict[str, Any]
    queue: str
    progress_done: int
    progress_total: int
    percent: float
    message: str | None
    error: str | None
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    url: str

    @field_validator("created_at", "started_at", "finished_at")
    @classmethod
    def _utc(cls, t: datetime | None) -> datetime | None:
        # SQLite hands back naive datetimes (written in UTC): say so, as RFC 3339 requires.
        return t.replace(tzinfo=UTC) if t is not None and t.tzinfo is None else t


def job_out(job: Job) -> JobOut:
    """A job as anyone may see it: errors and parameters name no server paths."""
    pct = 100.0 * job.progress_done / job.progress_total if job.progress_total else 0.0
    if job.state == JobState.SUCCEEDED:
        pct = 100.0
    return JobOut(
        id=job.id,
        kind=job.kind,
        state=job.state,
        params=scrub_values(job.params),
        queue=job.queue,
        progress_done=job.progress_done,
        progress_total=job.progress_total,
        percent=round(pct, 1),
        message=scrub(job.message),
        error=scrub(job.error),
        attempts=job.attempts,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        url=f"/api/v1/jobs/{job.id}",
    )
