"""FastAPI dependencies: a per-request session, the admin token and its checks."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, TypeVar

import anyio
from fastapi import Depends, Header, Request
from sqlalchemy.orm import Session

from backend.auth import ADMIN_COOKIE, AdminAuth, admin_token
from backend.config import Settings
from backend.db.session import POOL_CAPACITY, get_sessionmaker
from backend.errors import Unauthorized
from backend.limits import NEEDS_TOKEN

T = TypeVar("T")

# ADMIN_COOKIE and admin_token live in backend/auth.py; re-exported for their callers here.
__all__ = [
    "ADMIN_COOKIE",
    "AdminDep",
    "SessionDep",
    "admin_token",
    "in_session",
    "is_admin",
    "require_admin",
]


@contextmanager
def _transaction(settings: Settings) -> Iterator[Session]:
    session = get_sessionmaker(settings.database_url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def get_db(request: Request) -> Iterator[Session]:
    """One transaction per request, committed at the edge (services only flush)."""
    with _transaction(request.app.state.settings) as session:
        yield session


async def in_session(request: Request, work: Callable[[Session], T]) -> T:
    """``work(session)`` in one worker thread, its transaction opened, committed and closed
    there: one thread hop where a sync handler with SessionDep takes three (the dependency's
    entry and exit, the handler). For the hottest reads, the unit page and unit JSON, whose
    cold path those hops made about a fifth slower (benchmarks/server.py). At most
    ``read_concurrency`` at once (at most POOL_CAPACITY), so these calls never take every
    thread or connection."""
    state = request.app.state
    limiter = getattr(state, "session_limiter", None)
    if limiter is None:  # made on the event loop, on first use
        n = min(state.settings.read_concurrency, POOL_CAPACITY)
        limiter = state.session_limiter = anyio.CapacityLimiter(n)

    def run() -> T:
        with _transaction(state.settings) as session:
            return work(session)

    return await anyio.to_thread.run_sync(run, limiter=limiter)


# scope="function": the transaction commits when the handler returns, before the response is
# sent, so a commit that fails answers an error instead of the 200 already on its way (the
# default "request" scope ran the commit after the response went out).
# At most POOL_CAPACITY requests hold a session at once. Without the limit, 64 concurrent JSON
# requests deadlock: FastAPI serializes a sync handler's response in the shared threadpool
# while the request still holds its pooled connection, and every thread ends up waiting on
# the pool (measured by benchmarks/server.py; the limit waits without using a thread).
SessionDep = Annotated[Session, Depends(get_db, scope="function", max_concurrency=POOL_CAPACITY)]


def is_admin(request: Request) -> bool:
    """A browser signed in through /admin/login (a signed SameSite=Strict session)."""
    auth: AdminAuth = request.app.state.auth
    return auth.session_ok(request.cookies.get(ADMIN_COOKIE))


def require_admin(
    request: Request,
    authorization: Annotated[str | None, Header()] = None,
    x_admin_token: Annotated[str | None, Header()] = None,
) -> None:
    """Writes need the admin token (``Authorization: Bearer ...``, ``X-Admin-Token``) or the
    session cookie of a signed-in browser. (The headers are declared for the API docs; the
    check reads them from the request, as the write guard in backend/limits.py does.)"""
    auth: AdminAuth = request.app.state.auth
    if not auth.authorized(request.headers):
        raise Unauthorized(NEEDS_TOKEN)


AdminDep = Depends(require_admin)
