"""Proof 3, database loss: PostgreSQL (a throwaway cluster on a spare port) stopped under
load: every answer is 200 or a 503 with the JSON error, never a 500 or a hang, and every
answer is 200 again within 5 s of the database's return."""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from backend.db.migrate import upgrade
from backend.db.session import session_scope
from tests.conftest import ADMIN_TOKEN
from tests.factories import make_layer, make_model
from tests.reliability.services import OUTPUT, Postgres, server, stop, wait_for

pytestmark = pytest.mark.once  # runs its own PostgreSQL whatever the suite's database is

URLS = [
    "/api/v1/models",
    "/api/v1/models/tiny/layers/blocks.1/units?limit=50",
    "/api/v1/jobs",
    "/models/tiny/blocks.1/3",
    "/healthz",
]
RECOVERY_LIMIT = 5.0


@pytest.fixture
def postgres() -> Iterator[Postgres]:
    pg = Postgres()
    pg.start()
    yield pg
    pg.close()


class Load:
    """Threads requesting URLS in turn; every answer (or failure) recorded with its time."""

    def __init__(self, base: str, threads: int = 8) -> None:
        self.base, self.stop_flag = base, threading.Event()
        self.answers: list[tuple[float, str, int | str, str]] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def _run(self, i: int) -> None:
        with httpx.Client(base_url=self.base, timeout=10) as c:
            n = i
            while not self.stop_flag.is_set():
                url = URLS[n % len(URLS)]
                n += 1
                headers = {"Accept": "text/html"} if url.startswith("/models/") else {}
                try:
                    r = c.get(url, headers=headers)
                    answer: int | str = r.status_code
                    body = r.text[:300]
                except httpx.HTTPError as e:
                    answer, body = type(e).__name__, ""
                with self.lock:
                    self.answers.append((time.monotonic(), url, answer, body))

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop_flag.set()
        for t in self.threads:
            t.join(30)

    def since(self, t: float) -> list[tuple[float, str, int | str, str]]:
        with self.lock:
            return [a for a in self.answers if a[0] >= t]


def test_postgres_stopped_under_load(postgres: Postgres, tmp_path) -> None:
    upgrade(postgres.url)
    with session_scope(postgres.url) as s:
        make_layer(s, make_model(s, "tiny"), "blocks.1", units=64)
    env = {
        **os.environ,
        "MICROSCOPE_ENV": "test",
        "MICROSCOPE_DATA_DIR": str(tmp_path / "data"),
        "MICROSCOPE_DATABASE_URL": postgres.url,
        "MICROSCOPE_BROKER_URL": f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}",
        "MICROSCOPE_STORAGE_URL": f"file://{tmp_path / 'objects'}",
        "MICROSCOPE_ADMIN_TOKEN": ADMIN_TOKEN,
    }
    proc, base = server(env)
    try:
        with Load(base) as load:
            time.sleep(2)
            t_stop = time.monotonic()
            postgres.stop()
            time.sleep(4)
            away = load.since(time.monotonic() - 3)  # well after the stop
            postgres.start()
            t_back = time.monotonic()
            recovered = wait_for(
                lambda: {a[2] for a in load.since(time.monotonic() - 0.5)} == {200},
                RECOVERY_LIMIT + 5,
                "all 200 again",
            )
            time.sleep(1)
        answers = load.answers
    finally:
        stop(proc)
    statuses = Counter(a[2] for a in answers)
    assert set(statuses) <= {200, 503}, statuses  # never a 500, a timeout or a reset
    assert {a[2] for a in away} == {503}, Counter(a[2] for a in away)
    for _, url, status, body in answers:
        if status == 503 and url.startswith("/api/"):
            assert json.loads(body)["error"] == "unavailable"
    # Recovery: from the database's return to every answer being 200 again.
    first_all_ok = t_back + recovered - 0.5
    recovery = max(0.0, first_all_ok - t_back)
    assert recovery < RECOVERY_LIMIT, recovery
    OUTPUT.mkdir(exist_ok=True)
    (OUTPUT / "database_loss.json").write_text(
        json.dumps(
            {
                "requests": len(answers),
                "statuses": {str(k): v for k, v in statuses.items()},
                "down_seconds": round(t_back - t_stop, 1),
                "recovery_seconds": round(recovery, 2),
            }
        )
    )
