"""Who may write: the admin token (API clients) or a signed admin session (browsers).

The token never travels in a URL and is never the cookie: a browser signs in by posting it
once to /admin/login and gets a session cookie signed with a secret of its own (itsdangerous;
``SESSION_SECRET``, else derived from the token by HMAC, so changing the token ends every
session), lasting ``SESSION_HOURS``, ``Secure`` in production, ``SameSite=Strict`` (so no
cross-site request carries it: no CSRF), and ended by /admin/logout.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.datastructures import Headers
from starlette.requests import cookie_parser

from backend.config import Settings
from backend.templating import templates

ADMIN_COOKIE = "microscope_admin"
_SALT = "microscope.admin-session"
# Writes anyone may make: signing in needs the token in the body, signing out ends a session.
PUBLIC_WRITES = frozenset({"/admin/login", "/admin/logout"})


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


class AdminAuth:
    """Checks credentials from request headers alone, so writes are refused before their body
    is read (backend/limits.py) as well as by each write's dependency (backend/deps.py)."""

    def __init__(self, settings: Settings) -> None:
        self.token = admin_token(settings)
        secret = settings.session_secret or hmac.new(
            self.token.encode(), b"open-microscope admin sessions", hashlib.sha256
        ).hexdigest()
        self.signer = URLSafeTimedSerializer(secret, salt=_SALT)
        self.max_age = int(settings.session_hours * 3600)
        self.secure = settings.env == "production" or settings.public_url.startswith("https:")

    def token_ok(self, given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(str(given).encode(), self.token.encode())

    def new_session(self) -> str:
        return self.signer.dumps({"admin": True, "sid": secrets.token_urlsafe(8)})

    def session_ok(self, cookie: str | None) -> bool:
        if not cookie:
            return False
        try:
            data = self.signer.loads(cookie, max_age=self.max_age)
        except BadSignature:  # a guess, a tampered or an expired cookie
            return False
        return isinstance(data, dict) and data.get("admin") is True

    def authorized(self, headers: Headers) -> bool:
        """``Authorization: Bearer <token>``, ``X-Admin-Token`` or a valid session cookie."""
        given = headers.get("x-admin-token")
        authorization = headers.get("authorization", "")
        if authorization.lower().startswith("bearer "):
            given = authorization[7:].strip()
        if self.token_ok(given):
            return True
        return self.session_ok(cookie_parser(headers.get("cookie", "")).get(ADMIN_COOKIE))


router = APIRouter(include_in_schema=False)


def _local(target: str) -> str:
    """Only a path on this site (no open redirect to another host)."""
    ok = target.startswith("/") and not target.startswith("//") and "\\" not in target
    return target if ok else "/"


@router.get("/admin/login", response_class=HTMLResponse)
def login_form(request: Request, next: str = Query("/", max_length=2000)) -> Response:
    """The sign-in form (the token goes in a POST body, never in a URL)."""
    return templates.TemplateResponse(
        request, "login.html", {"next": _local(next), "error": None}
    )


@router.post("/admin/login")
def login(request: Request, token: str = Form(""), next: str = Form("/")) -> Response:
    auth: AdminAuth = request.app.state.auth
    if not auth.token_ok(token):
        ctx = {"next": _local(next), "error": "wrong admin token"}
        return templates.TemplateResponse(request, "login.html", ctx, status_code=401)
    resp = RedirectResponse(_local(next), status_code=303)
    resp.set_cookie(
        ADMIN_COOKIE,
        auth.new_session(),
        max_age=auth.max_age,
        httponly=True,
        samesite="strict",
        secure=auth.secure,
    )
    return resp


@router.post("/admin/logout")
def logout(request: Request) -> Response:
    resp = RedirectResponse("/", status_code=303)
    resp.delete_cookie(
        ADMIN_COOKIE, httponly=True, samesite="strict", secure=request.app.state.auth.secure
    )
    return resp
