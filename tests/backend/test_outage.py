"""With the database or broker away: 503 with the JSON error (the error page for browsers),
answered within seconds, never a 500, and a page cache that never freezes the event loop."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from backend.app import create_app
from backend.config import Settings
from backend.pagecache import PageCache
from tests.conftest import ADMIN_TOKEN


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def no_database(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path,
        database_url=f"postgresql+psycopg://postgres@127.0.0.1:{_closed_port()}/gone",
        broker_url=f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}",
        admin_token=ADMIN_TOKEN,
    )


def test_database_away_answers_503_never_500(no_database: Settings) -> None:
    with TestClient(create_app(no_database), raise_server_exceptions=False) as client:
        t0 = time.monotonic()
        for url in ("/api/v1/models", "/api/v1/jobs", "/api/v1/models/x/layers/y/units/0"):
            r = client.get(url)
            assert r.status_code == 503, (url, r.text)
            body = r.json()
            assert body["error"] == "unavailable" and body["status"] == 503
            assert r.headers["retry-after"] == "5"
        page = client.get("/models/x", headers={"accept": "text/html"})
        assert page.status_code == 503 and "<h1>503</h1>" in page.text
        admin = {"authorization": f"Bearer {ADMIN_TOKEN}"}
        write = client.post("/api/v1/families", json={"name": "x"}, headers=admin)
        assert write.status_code == 503
        assert time.monotonic() - t0 < 10  # refused connections are noticed at once


def test_healthz_checks_the_database_and_the_broker(settings, no_database, tmp_path) -> None:
    with TestClient(create_app(settings)) as client:
        r = client.get("/healthz")
        assert r.status_code == 200
        assert r.json() == {"status": "ok", "database": "ok", "broker": "ok"}
    with TestClient(create_app(no_database)) as client:
        r = client.get("/healthz")
        assert r.status_code == 503 and r.json()["database"].startswith("unavailable")
    broker_away = settings.model_copy(
        update={"broker_url": f"redis://127.0.0.1:{_closed_port()}/0"}
    )
    with TestClient(create_app(broker_away)) as client:
        r = client.get("/healthz")
        assert r.status_code == 503 and r.json()["broker"].startswith("unavailable")
        assert r.json()["database"] == "ok"


def test_a_slow_version_read_never_freezes_the_event_loop() -> None:
    def slow_read() -> int:
        time.sleep(2)  # a database that takes its time to refuse
        return 1

    async def page(_request):  # type: ignore[no-untyped-def]
        return JSONResponse({"ok": True})

    app = PageCache(Starlette(routes=[Route("/models/x", page)]), read_version=slow_read)

    async def many() -> float:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            t0 = time.monotonic()
            answers = await asyncio.gather(*(client.get("/models/x") for _ in range(8)))
            assert all(r.status_code == 200 for r in answers)
            return time.monotonic() - t0

    # Read in the loop, eight requests took 8 x 2 s; off the loop, they are served uncached.
    assert asyncio.run(many()) < 1.5
