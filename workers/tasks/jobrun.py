"""Running a job: reload its row, skip finished work, record state, progress and errors."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from sqlalchemy.orm import Session

from backend.config import get_settings
from backend.db.base import utcnow
from backend.db.models import Job
from backend.db.session import session_scope
from contracts.jobs import FINISHED_STATES, JobParams, JobState
from workers.tasks.lease import heartbeat, holder_gone, lease_until, worker_name

P = TypeVar("P", bound=JobParams)


class TransientError(Exception):
    """An error worth retrying (a lost connection, a busy database)."""


class Waiting(TransientError):
    """The job's inputs are not ready yet (a model still registering, say): retry later."""


class DependencyFailed(ValueError):
    """A job this one waits on failed: this one fails too, saying why."""


class WaitedTooLong(ValueError):
    """The job's inputs were still not ready after JOB_WAIT_HOURS."""


def settled(jobs: Sequence[Job], what: str) -> bool:
    """True once one of ``jobs`` (the same work, say mining for one model and dataset)
    succeeded; DependencyFailed once all of them ended otherwise; False while any is in
    flight or none exists yet (waiting; the wait has a deadline)."""
    if any(j.state == JobState.SUCCEEDED for j in jobs):
        return True
    ended = [j for j in jobs if j.state in FINISHED_STATES]
    if jobs and len(ended) == len(jobs):
        last = ended[-1]
        raise DependencyFailed(f"{what} (job #{last.id}) {last.state}: {last.error or ''}")
    return False


def params_of(job: Job, kind: type[P]) -> P:
    """The job's parameters, validated against the contract the web process wrote them by."""
    return kind.model_validate(job.params)


@dataclass
class Progress:
    """Writes progress to the jobs table in its own short transactions, at most every 0.5 s."""

    job_id: int
    db_url: str
    min_interval: float = 0.5
    _last: float = 0.0

    def __call__(self, done: int, total: int | None = None, message: str | None = None) -> None:
        now = time.monotonic()
        if now - self._last < self.min_interval and (total is None or done < total):
            return
        self._last = now
        with session_scope(self.db_url) as s:
            job = s.get(Job, self.job_id)
            if job is None:
                return
            job.progress_done = done
            if total is not None:
                job.progress_total = total
            if message is not None:
                job.message = message


def _set(db_url: str, job_id: int, **fields: object) -> None:
    with session_scope(db_url) as s:
        job = s.get(Job, job_id)
        if job is not None:
            for k, v in fields.items():
                setattr(job, k, v)


# One job at a time per worker process. The solo pool is meant to run tasks one by one, but
# Celery fires delayed (retried) tasks from a timer thread on brokers without an event loop
# (the embedded SQL broker), and two jobs sharing a cached model would interfere (measured:
# a mining pass and a render overlapping in one process).
_PROCESS_LOCK = threading.Lock()


Work = Callable[[Session, Job, Progress], str | None]
OnFailure = Callable[[Session, Job, Exception], None]


def run_job(job_id: int, work: Work, on_failure: OnFailure | None = None) -> str:
    """Run ``work`` for a job once; returns the final state.

    Idempotent: a job that already succeeded returns at once (a re-delivered message does
    nothing). ``work`` runs in one transaction committed at the end (it may commit along the
    way so a killed worker loses little); it returns a message. ``on_failure`` records the
    failure on domain rows in a fresh transaction.
    Failures are recorded on the job and re-raised so Celery sees them too.
    """
    with _PROCESS_LOCK:
        return _run_job(job_id, work, on_failure)


RUNNING_ELSEWHERE = "running elsewhere"
# Cleared whenever a job stops running: nobody holds it any more.
NO_LEASE = {"worker": None, "heartbeat_at": None, "lease_expires_at": None}


def _claim(db_url: str, job_id: int, holder: str, lease_seconds: float) -> str | None:
    """Mark the job running under this worker's lease; the state to return instead when it
    is finished, gone, or running under another worker's live lease (a duplicate message)."""
    with session_scope(db_url) as s:
        job = s.get(Job, job_id, with_for_update=True)
        if job is None:
            return "missing"
        if job.state in (JobState.SUCCEEDED, JobState.CANCELLED):
            return job.state
        now = utcnow()
        expires = job.lease_expires_at
        if expires is not None and expires.tzinfo is None:
            expires = expires.replace(tzinfo=now.tzinfo)  # SQLite: written as UTC
        live = expires is not None and expires > now and not holder_gone(job.worker)
        if job.state == JobState.RUNNING and live:
            return RUNNING_ELSEWHERE
        job.state = JobState.RUNNING
        job.attempts += 1
        job.started_at = now
        job.error = None
        job.worker = holder
        job.heartbeat_at = now
        job.lease_expires_at = lease_until(lease_seconds)
    return None


def _wait_or_give_up(db_url: str, job_id: int, e: Waiting, wait_hours: float) -> None:
    """Record the wait (its retry is the job's live message); past the deadline, fail."""
    now = utcnow()
    with session_scope(db_url) as s:
        job = s.get(Job, job_id)
        if job is None:
            return
        since = job.waiting_since or now
        if since.tzinfo is None:
            since = since.replace(tzinfo=now.tzinfo)
        job.waiting_since = since
        if now - since > timedelta(hours=wait_hours):
            job.state = JobState.FAILED
            job.error = f"WaitedTooLong: still {e} after {wait_hours:g} h"
            job.message = "failed"
            job.finished_at = now
        else:
            job.state = JobState.QUEUED
            job.message = str(e) or "waiting"
            job.sent_at = now
        for k, v in NO_LEASE.items():
            setattr(job, k, v)
        failed = job.state == JobState.FAILED
    if failed:
        raise WaitedTooLong(f"still {e} after {wait_hours:g} h") from e


def _run_job(job_id: int, work: Work, on_failure: OnFailure | None) -> str:
    settings = get_settings()
    db_url, holder, lease = settings.database_url, worker_name(), settings.job_lease_seconds
    refused = _claim(db_url, job_id, holder, lease)
    if refused is not None:
        return refused
    progress = Progress(job_id, db_url)
    try:
        with heartbeat(db_url, job_id, holder, lease), session_scope(db_url) as s:
            job = s.get(Job, job_id)
            assert job is not None
            message = work(s, job, progress)
    except Waiting as e:
        _wait_or_give_up(db_url, job_id, e, settings.job_wait_hours)
        raise
    except TransientError as e:
        _set(
            db_url,
            job_id,
            state=JobState.QUEUED,
            message=str(e) or "transient error; retrying",
            sent_at=utcnow(),  # the retry is the job's live message
            **NO_LEASE,
        )
        raise
    except Exception as e:
        if on_failure is not None:
            with session_scope(db_url) as s:
                failed = s.get(Job, job_id)
                if failed is not None:
                    on_failure(s, failed, e)
        # The traceback goes to the worker's log (Celery logs the re-raised error); the row
        # keeps what failed, which the jobs pages and API show to anyone.
        _set(
            db_url,
            job_id,
            state=JobState.FAILED,
            error=f"{type(e).__name__}: {e}"[:2000],
            message="failed",
            finished_at=utcnow(),
            **NO_LEASE,
        )
        raise
    with session_scope(db_url) as s:
        job = s.get(Job, job_id)
        assert job is not None
        job.state = JobState.SUCCEEDED
        job.finished_at = utcnow()
        job.message = message
        job.waiting_since = None
        for k, v in NO_LEASE.items():
            setattr(job, k, v)
        if job.progress_total:
            job.progress_done = job.progress_total
    return JobState.SUCCEEDED


WAIT_SECONDS = 3  # how soon a job whose inputs are not ready looks again
TRANSIENT_RETRIES = 3


def job_task(name: str, work: Work, on_failure: OnFailure | None = None) -> Any:
    """Register the Celery task ``name`` that runs ``work`` for a job id.

    A job whose inputs are not ready (Waiting) looks again every few seconds, for at most
    JOB_WAIT_HOURS; any other TransientError is retried a few times with backoff; the rest
    fail the job.
    """
    from workers.celery_app import app

    def run(self: Any, job_id: int) -> str:
        try:
            return run_job(job_id, work, on_failure)
        except WaitedTooLong:
            raise  # recorded as failed: no more retries
        except Waiting as e:
            raise self.retry(exc=e, countdown=WAIT_SECONDS, max_retries=None) from e
        except TransientError as e:
            raise self.retry(
                exc=e, countdown=2**self.request.retries, max_retries=TRANSIENT_RETRIES
            ) from e

    return app.task(name=name, bind=True)(run)
