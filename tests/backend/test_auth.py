"""Admin sessions: the token signs a browser in through a POST and never becomes its cookie;
the session is signed, expires, ends on sign-out, and is Secure in production."""

from __future__ import annotations

import time
from pathlib import Path

from backend.auth import ADMIN_COOKIE, AdminAuth
from backend.config import Settings
from tests.conftest import ADMIN_TOKEN

FAMILY = {"name": "Stripes"}


def _sign_in(client, token: str = ADMIN_TOKEN):  # type: ignore[no-untyped-def]
    return client.post(
        "/admin/login", data={"token": token, "next": "/families"}, follow_redirects=False
    )


def test_the_token_in_a_url_signs_nobody_in(client) -> None:
    r = client.get(f"/admin/login?token={ADMIN_TOKEN}", follow_redirects=False)
    assert r.status_code == 200 and ADMIN_COOKIE not in client.cookies
    assert 'type="password"' in r.text  # the form that posts it instead
    assert client.post("/api/v1/families", json=FAMILY).status_code == 401


def test_sign_in_gives_a_signed_session_not_the_token(client) -> None:
    assert _sign_in(client, "wrong").status_code == 401
    assert ADMIN_COOKIE not in client.cookies
    r = _sign_in(client)
    assert r.status_code == 303 and r.headers["location"] == "/families"
    cookie = r.headers["set-cookie"]
    assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
    assert "max-age=43200" in cookie.lower()  # 12 hours, not 30 days
    assert "secure" not in cookie.lower()  # plain HTTP in development
    value = client.cookies[ADMIN_COOKIE]
    assert ADMIN_TOKEN not in value
    assert client.post("/api/v1/families", json=FAMILY).status_code == 201


def test_a_forged_or_tampered_session_is_refused(client) -> None:
    _sign_in(client)
    good = client.cookies[ADMIN_COOKIE]
    for forged in (ADMIN_TOKEN, good[:-2] + ("AA" if not good.endswith("AA") else "BB"), "x"):
        client.cookies.clear()
        client.cookies.set(ADMIN_COOKIE, forged)
        assert client.post("/api/v1/families", json=FAMILY).status_code == 401, forged


def test_sign_out_ends_the_session(client) -> None:
    _sign_in(client)
    r = client.post("/admin/logout", follow_redirects=False)
    assert r.status_code == 303
    assert ADMIN_COOKIE not in client.cookies
    assert client.post("/api/v1/families", json=FAMILY).status_code == 401


def test_the_next_target_stays_on_this_site(client) -> None:
    for target in ("https://evil.example/", "//evil.example/x", "/\\evil.example"):
        r = client.post(
            "/admin/login", data={"token": ADMIN_TOKEN, "next": target}, follow_redirects=False
        )
        assert r.headers["location"] == "/", target


def test_sessions_expire_and_end_when_the_token_changes(tmp_path: Path) -> None:
    auth = AdminAuth(Settings(data_dir=tmp_path, admin_token=ADMIN_TOKEN, session_hours=0.0001))
    cookie = auth.new_session()
    assert AdminAuth(Settings(data_dir=tmp_path, admin_token=ADMIN_TOKEN)).session_ok(cookie)
    rotated = AdminAuth(Settings(data_dir=tmp_path, admin_token="another-token-0123456789"))
    assert not rotated.session_ok(cookie)
    time.sleep(1.1)
    assert not auth.session_ok(cookie)  # past its lifetime


def test_production_sessions_are_secure(tmp_path: Path) -> None:
    prod = Settings(
        env="production",
        data_dir=tmp_path,
        admin_token="x" * 32,
        database_url="postgresql+psycopg://u@db/microscope",
        broker_url="redis://redis:6379/0",
        cors_origins=["https://microscope.example"],
    )
    assert AdminAuth(prod).secure
    assert not AdminAuth(Settings(data_dir=tmp_path, admin_token="x" * 32)).secure
