"""FastAPI dependency aliases: settings, a per-request session, the admin check."""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy.orm import Session

from backend.config import Settings
from backend.db.session import POOL_CAPACITY, get_sessionmaker
from backend.errors import Unauthorized


def settings_dep(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


SettingsDep = Annotated[Settings, Depends(settings_dep)]


def get_db(request: Request) -> Iterator[Session]:
    """One transaction per request, committed at the edge (services only flush)."""
    settings: Settings = request.app.state.settings
    session = get_sessionmaker(settings.database_url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


# scope="function": the transaction commits when the handler returns, before the response is
# sent, so a commit that fails answers an error instead of the 200 already on its way (the
# default "request" scope ran the commit after the response went out).
# At most POOL_CAPACITY requests hold a session at once. Without the limit, 64 concurrent JSON
# requests deadlock: FastAPI serializes a sync handler's response in the shared threadpool
# while the request still holds its pooled connection, and every thread ends up waiting on
# the pool (measured by benchmarks/server.py; the limit waits without using a thread).
SessionDep = Annotated[
    Session, Depends(get_db, scope="function", max_concurrency=POOL_CAPACITY)
]


def admin_token(settings: Settings) -> str:
    """The configured token, or one generated once and kept in the data directory."""
    if settings.admin_token:
        return settings.admin_token
    path = Path(settings.data_dir) / "admin-token"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(24))
        path.chmod(0o600)
    return path.read_text().strip()


ADMIN_COOKIE = "microscope_admin"


def token_matches(request: Request, given: str | None) -> bool:
    expected = request.app.state.admin_token
    return bool(given) and hmac.compare_digest(str(given).encode(), expected.encode())


def is_admin(request: Request) -> bool:
    """A browser signed in through /admin/login (SameSite=Strict cookie, so no CSRF)."""
    return token_matches(request, request.cookies.get(ADMIN_COOKIE))


def require_admin(
    request: Request,
    authorization: Annotated[str | None, Header()] = None,
    x_admin_token: Annotated[str | None, Header()] = None,
) -> None:
    """Writes need the admin token (``Authorization: Bearer ...``, ``X-Admin-Token`` or the
    admin cookie of a signed-in browser)."""
    given = x_admin_token
    if authorization and authorization.lower().startswith("bearer "):
        given = authorization[7:].strip()
    if not token_matches(request, given) and not is_admin(request):
        raise Unauthorized("this write needs the admin token (Authorization: Bearer <token>)")


AdminDep = Depends(require_admin)
