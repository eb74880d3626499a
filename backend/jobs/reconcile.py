"""The jobs table is the truth: bring the broker and the domain rows in line with it.

Run periodically in every worker (workers/tasks/lease.py) and once when ``serve`` or ``up``
starts. Two kinds of job are stuck without it:

- a *running* job whose worker died (``kill -9``, a lost machine): its lease is no longer
  renewed by the heartbeat, so once ``lease_expires_at`` passes it is put back to queued and
  sent again, and the model it was registering or the dataset it was importing goes back to
  pending (its task resumes from what was committed);
- a *queued* job whose message was lost (the broker was down at enqueue, restarted without
  persistence, or the embedded broker dropped a dead worker's message): once its last send is
  older than ``JOB_RESEND_SECONDS`` it is sent again. Each later re-send waits twice as long
  as the job has already been queued since the previous one, so a job that is only waiting
  behind a long queue gets a handful of duplicate messages at most; a duplicate is harmless
  (a task reloads its job and returns when it is finished or running elsewhere).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from backend.db.base import utcnow
from backend.db.models import Dataset, Job, Model
from backend.jobs.enqueue import PendingTask, enqueue_after_commit
from contracts.jobs import TASKS, JobState

log = logging.getLogger(__name__)

# States a model or dataset is left in when the worker registering or importing it dies.
_BUSY_STATES = ("registering", "importing")


@dataclass
class Reconciled:
    requeued: list[int] = field(default_factory=list)  # running, lease expired
    resent: list[int] = field(default_factory=list)  # queued, no recent send

    def __bool__(self) -> bool:
        return bool(self.requeued or self.resent)


def send_again(session: Session, job: Job, now: datetime) -> None:
    """Send ``job`` once the session commits, and record when."""
    name = TASKS.get(job.kind)
    if name is None:
        return
    job.sent_at = now
    enqueue_after_commit(session, PendingTask(name, job.id, job.queue, job.priority))


def release(session: Session, job: Job, message: str) -> None:
    """Put a running job back to queued, its lease dropped and its domain row reset."""
    job.state = JobState.QUEUED
    job.message = message
    job.worker = job.heartbeat_at = job.lease_expires_at = None
    row: Model | Dataset | None = None
    if job.kind == "register_model" and job.model_id is not None:
        row = session.get(Model, job.model_id)
    elif job.kind == "import_dataset" and job.dataset_id is not None:
        row = session.get(Dataset, job.dataset_id)
    if row is not None and row.state in _BUSY_STATES:
        row.state = "pending"


def reconcile(
    session: Session,
    *,
    resend_after: float,
    now: datetime | None = None,
    startup: bool = False,
) -> Reconciled:
    """Re-queue running jobs whose lease expired; send again queued jobs whose last send is
    older than ``resend_after`` seconds (``startup``: every queued job, as nothing sent before
    this process started can be trusted to be alive). Sends happen when ``session`` commits."""
    now = now or utcnow()
    done = Reconciled()
    expired = session.scalars(
        select(Job)
        .where(Job.state == JobState.RUNNING)
        .where(or_(Job.lease_expires_at.is_(None), Job.lease_expires_at < now))
        .order_by(Job.id)
        .with_for_update(skip_locked=True)
    ).all()
    for job in expired:
        release(session, job, f"re-queued: worker {job.worker or '?'} stopped renewing its lease")
        send_again(session, job, now)
        done.requeued.append(job.id)
    queued = session.scalars(
        select(Job)
        .where(Job.state == JobState.QUEUED)
        .order_by(Job.priority.desc(), Job.id)
        .with_for_update(skip_locked=True)
    ).all()
    for job in queued:
        if job.id in done.requeued:
            continue
        if startup or _silent(job, now, resend_after):
            send_again(session, job, now)
            done.resent.append(job.id)
    if done:
        log.warning("reconciled jobs: re-queued %s, sent again %s", done.requeued, done.resent)
    return done


def _silent(job: Job, now: datetime, resend_after: float) -> bool:
    """True when the job's last send is older than its back-off (see the module docstring)."""
    last = _aware(job.sent_at or job.updated_at or job.created_at)
    created = _aware(job.created_at) if job.created_at else last
    backoff = max(timedelta(seconds=resend_after), last - created)
    return now - last >= backoff


def lease_expired(job: Job, now: datetime) -> bool:
    """True when nobody holds a live lease on the job."""
    return job.lease_expires_at is None or _aware(job.lease_expires_at) < now


def _aware(t: datetime) -> datetime:
    # SQLite hands back naive datetimes for timezone-aware columns; they were written in UTC.
    return t if t.tzinfo is not None else t.replace(tzinfo=utcnow().tzinfo)
