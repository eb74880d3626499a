"""Send tasks by name only after the enqueuing transaction commits; drop them on rollback."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache

from celery import Celery
from sqlalchemy import event
from sqlalchemy.orm import Session

from backend.celeryconf import make_celery
from backend.config import get_settings

_PENDING = "microscope_pending_tasks"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PendingTask:
    name: str
    job_id: int
    queue: str
    priority: int


@lru_cache
def _client(broker_url: str) -> Celery:
    return make_celery(get_settings(), name="microscope-client")


def celery_client() -> Celery:
    """The sending side of Celery for the current settings (no task code imported)."""
    return _client(get_settings().broker_url)


def send_now(task: PendingTask) -> None:
    """Publish one task message (job id only)."""
    celery_client().send_task(
        task.name, args=[task.job_id], queue=task.queue, priority=task.priority
    )


def enqueue_after_commit(session: Session, task: PendingTask) -> None:
    """Queue ``task`` to be sent when ``session`` commits."""
    session.info.setdefault(_PENDING, []).append(task)


@event.listens_for(Session, "after_commit")
def _send_pending(session: Session) -> None:
    tasks = session.info.pop(_PENDING, [])
    for task in tasks:
        try:
            send_now(task)
        except Exception:
            # The job row is committed as queued; the reconciler (backend/jobs/reconcile.py)
            # sends it again, so a broker outage loses nothing.
            log.exception("could not send job %s to the broker", task.job_id)


@event.listens_for(Session, "after_soft_rollback")
def _drop_pending(session: Session, _previous_transaction: object) -> None:
    session.info.pop(_PENDING, None)
