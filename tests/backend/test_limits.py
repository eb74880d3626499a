"""Writes are refused before their body is read: without credentials (401), or over the body
limit (413), declared or streamed."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from backend.app import create_app
from backend.config import get_settings
from tests.conftest import ADMIN_TOKEN


@pytest.fixture
def small_limit(settings, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("MICROSCOPE_MAX_BODY_KB", "1")
    get_settings.cache_clear()
    return get_settings()


def _call(app: Any, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple:
    """Run one request through the ASGI app; (status, JSON body, whether the body was read)."""
    read = False
    sent: list[dict] = []

    async def receive() -> dict:
        nonlocal read
        read = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    payload = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(payload), read


def test_a_write_without_the_token_is_refused_before_its_body_is_read(small_limit) -> None:
    app = create_app(small_limit)
    body = json.dumps({"name": "x" * 100}).encode()
    headers = {"content-type": "application/json", "content-length": str(len(body))}
    status, payload, read = _call(app, "POST", "/api/v1/families", headers, body)
    assert (status, payload["error"], read) == (401, "unauthorized", False)
    wrong = {**headers, "authorization": "Bearer wrong"}
    status, _, read = _call(app, "POST", "/api/v1/families", wrong, body)
    assert (status, read) == (401, False)


def test_a_declared_body_over_the_limit_is_413_unread(small_limit) -> None:
    app = create_app(small_limit)
    body = json.dumps({"name": "x" * 2000}).encode()
    headers = {
        "content-type": "application/json",
        "content-length": str(len(body)),
        "authorization": f"Bearer {ADMIN_TOKEN}",
    }
    status, payload, read = _call(app, "POST", "/api/v1/families", headers, body)
    assert (status, payload["error"], payload["status"], read) == (413, "too_large", 413, False)
    assert "1024 bytes" in payload["detail"]


def test_a_streamed_body_over_the_limit_is_cut_off_with_413(small_limit, admin) -> None:
    with TestClient(create_app(small_limit)) as client:
        chunks = (b'{"name": "' + b"x" * 600, b"x" * 600 + b'"}')
        r = client.post("/api/v1/families", content=iter(chunks), headers=admin)
        assert r.status_code == 413 and r.json()["error"] == "too_large"
        # A form post (the pages' writes) is held to the same limit.
        r = client.post("/families", data={"name": "x" * 2000}, headers=admin)
        assert r.status_code == 413
        assert client.get("/api/v1/families").json() == []
        # Under the limit, the same write goes through.
        r = client.post("/api/v1/families", json={"name": "Stripes"}, headers=admin)
        assert r.status_code == 201, r.text
