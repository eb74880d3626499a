"""Creating jobs: one row per unit of work, idempotent by (kind, params)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy.orm import Session

from backend.db.base import utcnow
from backend.db.models import Job
from backend.jobs.enqueue import PendingTask, enqueue_after_commit
from backend.jobs.reconcile import lease_expired, release, send_again
from backend.jobs.repository import JobRepository
from contracts.jobs import IN_FLIGHT_STATES, JobParams, JobState


def dedupe_key(kind: str, params: dict[str, Any]) -> str:
    """kind + a hash of canonical params: the same work always maps to the same job."""
    blob = json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)
    return f"{kind}:{hashlib.sha256(blob.encode()).hexdigest()[:32]}"


def enqueue_job(
    session: Session,
    params: JobParams,
    *,
    queue: str = "cpu",
    priority: int = 5,
    model_id: int | None = None,
    dataset_id: int | None = None,
    total: int = 0,
) -> Job:
    """Create (or revive) the job for this work and send it once the transaction commits.

    A job that already succeeded or is in flight is returned as it is: nothing is redone.
    A failed or cancelled one is reset and sent again.
    """
    repo = JobRepository(session)
    kind, row = params.kind, params.to_row()
    key = dedupe_key(kind, row)
    job = repo.get_by_dedupe_key(key)
    if job is not None and job.state in (JobState.SUCCEEDED, *IN_FLIGHT_STATES):
        return job
    if job is None:
        job = repo.add(
            Job(
                kind=kind,
                dedupe_key=key,
                params=row,
                queue=queue,
                priority=priority,
                model_id=model_id,
                dataset_id=dataset_id,
                progress_total=total,
            )
        )
    else:
        job.state = JobState.QUEUED
        job.error = None
        job.message = "retry requested"
        job.progress_done = 0
        job.waiting_since = None
        session.flush()
    # If the broker is away the job stays queued, and the reconciler sends it again later.
    job.sent_at = utcnow()
    enqueue_after_commit(session, PendingTask(params.task, job.id, queue, priority))
    return job


def retry_job(session: Session, job: Job) -> Job:
    """Send a job again: a failed or cancelled one, a queued one (its message may be lost), or
    a running one whose worker stopped renewing its lease. A job running under a live lease,
    or finished well, is returned as it is. Its task skips whatever is already done."""
    now = utcnow()
    if job.state in (JobState.FAILED, JobState.CANCELLED):
        job.state = JobState.QUEUED
        job.error = None
        job.message = "retry requested"
        job.waiting_since = None
    elif job.state == JobState.RUNNING and lease_expired(job, now):
        release(session, job, "retry requested: its worker stopped renewing its lease")
    elif job.state != JobState.QUEUED:
        return job
    send_again(session, job, now)
    session.flush()
    return job
