"""Creating jobs: one row per unit of work, idempotent by (kind, params)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy.orm import Session

from backend.db.models import Job
from backend.jobs.enqueue import PendingTask, enqueue_after_commit
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
        session.flush()
    enqueue_after_commit(session, PendingTask(params.task, job.id, queue, priority))
    return job


def resend_unfinished(session: Session, task_names: dict[str, str]) -> int:
    """Send again every queued/running job (after a crash); tasks skip finished work."""
    n = 0
    for job in JobRepository(session).unfinished():
        name = task_names.get(job.kind)
        if name:
            enqueue_after_commit(session, PendingTask(name, job.id, job.queue, job.priority))
            n += 1
    return n


def retry_job(session: Session, job: Job, task_names: dict[str, str]) -> Job:
    """Send a failed or cancelled job again (its task skips whatever is already done)."""
    if job.state not in (JobState.FAILED, JobState.CANCELLED):
        return job
    name = task_names[job.kind]
    job.state = JobState.QUEUED
    job.error = None
    job.message = "retry requested"
    session.flush()
    enqueue_after_commit(session, PendingTask(name, job.id, job.queue, job.priority))
    return job
