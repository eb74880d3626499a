"""GET /healthz: whether this web process can reach its database and broker right now.

200 ``{"status": "ok", "database": "ok", "broker": "ok"}`` when both answer; 503 with the
JSON error (and the same per-service fields) when either is away, so a load balancer or
``docker-compose`` stops sending traffic and starts again once they are back. Checks run off
the event loop, each bounded by a short timeout, and their result is kept for a second so a
busy prober cannot pile up connections.
"""

from __future__ import annotations

import time
from threading import Lock

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from kombu import Connection
from sqlalchemy import text

from backend.config import Settings
from backend.db.session import get_engine

CHECK_TIMEOUT_SECONDS = 2
CACHE_SECONDS = 1.0

router = APIRouter(include_in_schema=False)


class Health:
    def __init__(self, settings: Settings) -> None:
        self.database_url = settings.database_url
        self.broker_url = settings.broker_url
        self._lock = Lock()
        self._at = -CACHE_SECONDS
        self._last: dict[str, str] = {}

    def _database(self) -> str:
        try:
            with get_engine(self.database_url).connect() as conn:
                conn.execute(text("SELECT 1"))
            return "ok"
        except Exception as e:  # noqa: BLE001 - any failure means unavailable
            return f"unavailable ({type(e).__name__})"

    def _broker(self) -> str:
        try:
            with Connection(self.broker_url, connect_timeout=CHECK_TIMEOUT_SECONDS) as conn:
                conn.ensure_connection(max_retries=1, timeout=CHECK_TIMEOUT_SECONDS)
            return "ok"
        except Exception as e:  # noqa: BLE001 - any failure means unavailable
            return f"unavailable ({type(e).__name__})"

    def check(self) -> dict[str, str]:
        """Each service's state, at most CACHE_SECONDS old."""
        with self._lock:
            if time.monotonic() - self._at >= CACHE_SECONDS:
                self._last = {"database": self._database(), "broker": self._broker()}
                self._at = time.monotonic()
            return dict(self._last)


@router.get("/healthz")
async def healthz(request: Request) -> JSONResponse:
    health: Health = request.app.state.health
    checks = await run_in_threadpool(health.check)
    away = [name for name, state in checks.items() if state != "ok"]
    if not away:
        return JSONResponse({"status": "ok", **checks})
    detail = "; ".join(f"{name} {checks[name]}" for name in away)
    body = {"error": "unavailable", "detail": detail, "status": 503, **checks}
    return JSONResponse(body, 503, headers={"Retry-After": "5"})
