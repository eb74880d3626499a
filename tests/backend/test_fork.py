"""A forked child (a Celery prefork pool process) gets its own database connections: what the
parent's reconciler thread holds at the fork can neither be shared nor stay locked."""

from __future__ import annotations

import os
import signal
import threading
import time

from sqlalchemy import text

from backend.db.session import get_engine, session_scope


def _child_can_query(url: str, seconds: float) -> bool:
    """Fork; the child runs one query and exits 0. False if it fails or is still waiting."""
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            with session_scope(url) as s:
                code = 0 if s.execute(text("select 1")).scalar() == 1 else 1
        finally:
            os._exit(code)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status) == 0
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return False


def test_a_fork_while_the_parent_holds_the_pool_lock_still_queries(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'fork.sqlite'}"
    engine = get_engine(url)
    with session_scope(url) as s:
        s.execute(text("select 1"))  # a connection sits in the parent's pool
    pool = engine.pool
    # The parent's reconciler thread, caught inside the pool at the moment of the fork.
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with pool._pool.mutex:  # type: ignore[attr-defined]  # QueuePool's queue lock
            held.set()
            release.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    held.wait(5)
    try:
        assert _child_can_query(url, 20)
    finally:
        release.set()
        t.join()
    # The parent's own pool is untouched by the child's.
    assert engine.pool is pool
    with session_scope(url) as s:
        assert s.execute(text("select 1")).scalar() == 1
