"""Engines and sessions; one transaction per request or task, committed at the edge."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

# Connections per process; SessionDep admits at most this many requests to the database at
# once, so a request never waits on the pool while holding a worker thread (see deps.py).
POOL_SIZE, POOL_OVERFLOW = 10, 10
POOL_CAPACITY = POOL_SIZE + POOL_OVERFLOW
# PostgreSQL: a server that is away is noticed within seconds, never waited on for minutes
# (a request then answers 503, see backend/failures.py); a runaway statement is cancelled.
CONNECT_TIMEOUT_SECONDS = 3
STATEMENT_TIMEOUT_MS = 60_000
POOL_TIMEOUT_SECONDS = 10


def make_engine(url: str) -> Engine:
    """An engine with the settings each backend needs."""
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            # Every connection kept: an overflow connection is closed on return, and opening
            # one (with its PRAGMAs) again and again cost a busy web process about 8% of a
            # unit request's CPU (benchmarks/server.py under py-spy). SQLite connections hold
            # no server resources, so keeping them all is free.
            pool_size=POOL_CAPACITY,
            max_overflow=0,
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            # WAL: readers never block the worker's writes; FKs for cascades.
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=POOL_SIZE,
        max_overflow=POOL_OVERFLOW,
        pool_timeout=POOL_TIMEOUT_SECONDS,
        connect_args={
            "connect_timeout": CONNECT_TIMEOUT_SECONDS,
            "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
        },
    )


_ENGINES: list[Engine] = []  # every engine get_engine made in this process


@lru_cache
def get_engine(url: str) -> Engine:
    """The process-wide engine for a URL."""
    engine = make_engine(url)
    _ENGINES.append(engine)
    return engine


def _fresh_pools_in_child() -> None:
    # A forked child (a Celery prefork pool process) must never use its parent's
    # connections: the parent's reconciler thread may be using one at that moment (neither
    # a PostgreSQL socket nor an SQLite handle can be shared), and a pool lock it held at the
    # fork would never be released in the child, whose first query would then wait forever.
    # dispose(close=False) gives the child new, empty pools and leaves the parent's alone.
    for engine in _ENGINES:
        engine.dispose(close=False)


os.register_at_fork(after_in_child=_fresh_pools_in_child)


@lru_cache
def get_sessionmaker(url: str) -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(url), expire_on_commit=False)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session whose transaction commits on success and rolls back on error."""
    session = get_sessionmaker(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


# Every Session bumps the catalog version when it commits catalog changes (the page cache's
# validator); importing the module registers its listeners.
from backend.db import version as _version  # noqa: E402,F401
