"""A running job's lease, and the reconciler every worker runs.

While a job runs, a heartbeat thread renews its lease (``lease_expires_at``) every quarter of
``JOB_LEASE_SECONDS``; a worker killed with ``kill -9`` stops renewing it, and the reconciler
(backend/jobs/reconcile.py) re-queues the job once it expires. Every worker process runs that
reconciler on a timer thread (started when Celery reports the worker ready), so a lost job is
found within ``JOB_LEASE_SECONDS + RECONCILE_SECONDS`` as long as any worker is alive.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from sqlalchemy import update

from backend.config import get_settings
from backend.db.base import utcnow
from backend.db.models import Job
from backend.db.session import session_scope
from backend.jobs.reconcile import reconcile
from contracts.jobs import JobState

log = logging.getLogger(__name__)


def worker_name() -> str:
    """This process, as a lease names its holder."""
    return f"{socket.gethostname()}:{os.getpid()}"


def holder_gone(holder: str | None) -> bool:
    """True when a lease's holder is a process of this machine that no longer exists (a
    worker child killed with -9 whose task came back to its pool): no need to wait out its
    lease."""
    host, _, pid = (holder or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def lease_until(seconds: float) -> Any:
    return utcnow() + timedelta(seconds=seconds)


def renew(db_url: str, job_id: int, holder: str, seconds: float) -> bool:
    """Extend the lease if ``holder`` still holds it; False when it was taken away."""
    with session_scope(db_url) as s:
        done = s.execute(
            update(Job)
            .where(Job.id == job_id, Job.worker == holder, Job.state == JobState.RUNNING)
            .values(heartbeat_at=utcnow(), lease_expires_at=lease_until(seconds))
        )
    return bool(getattr(done, "rowcount", 0))


@contextmanager
def heartbeat(db_url: str, job_id: int, holder: str, seconds: float) -> Iterator[None]:
    """Renew the job's lease every ``seconds / 4`` while the block runs."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(seconds / 4):
            try:
                if not renew(db_url, job_id, holder, seconds):
                    log.warning("job %s: lease lost (re-queued by a reconciler)", job_id)
                    return
            except Exception:  # noqa: BLE001 - the database is away: try again next beat
                log.warning("job %s: could not renew the lease", job_id, exc_info=True)

    thread = threading.Thread(target=beat, name=f"lease-{job_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def reconcile_once(*, startup: bool = False) -> None:
    """One reconciliation in its own transaction (sends go out when it commits)."""
    settings = get_settings()
    with session_scope(settings.database_url) as s:
        reconcile(s, resend_after=settings.job_resend_seconds, startup=startup)


# A prefork worker forks its pool processes from the process this thread runs in. A fork in
# the middle of a round would copy into the child whatever locks the round holds at that
# moment (the database pool's, the broker producer pool's, ...), held by a thread the child
# does not have: the child's first task then waits on them forever (seen under the
# worker-crash proof: a replacement pool process received its task and never ran it). So a
# fork waits for the round in progress, and a round never starts during a fork.
_ROUND = threading.Lock()
os.register_at_fork(
    before=_ROUND.acquire, after_in_parent=_ROUND.release, after_in_child=_ROUND.release
)


def _reconcile_forever(stop: threading.Event, every: float) -> None:
    while not stop.wait(every):
        try:
            with _ROUND:
                reconcile_once()
        except Exception:  # noqa: BLE001 - database or broker away: the next round retries
            log.warning("reconciler round failed", exc_info=True)


_STOP = threading.Event()


def start_reconciler() -> threading.Thread:
    """Start this process's reconciler thread (daemon: it ends with the worker)."""
    every = get_settings().reconcile_seconds
    thread = threading.Thread(
        target=_reconcile_forever, args=(_STOP, every), name="job-reconciler", daemon=True
    )
    thread.start()
    return thread
