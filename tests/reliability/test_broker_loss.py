"""Proof 2, broker loss: Redis (a server of our own, without persistence) down at enqueue,
and restarted while a real worker runs jobs: every job completes; none is lost."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select

from backend.config import get_settings
from backend.db.models import Dataset, Job
from backend.db.session import session_scope
from tests.reliability.services import OUTPUT, Redis, stop, wait_for, worker

pytestmark = pytest.mark.once  # runs its own Redis whatever the suite's broker is

IMAGES = 40  # per dataset: an import takes a moment, so a restart lands mid-run


def _folder(root: Path, name: str, seed: int) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(IMAGES):
        arr = rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"{i:03d}.png")
    return folder


@pytest.fixture
def redis(settings, monkeypatch) -> Iterator[Redis]:  # type: ignore[no-untyped-def]
    r = Redis()
    monkeypatch.setenv("MICROSCOPE_BROKER_URL", r.url)
    # Quick clocks, so lost messages are found in seconds (defaults: minutes).
    monkeypatch.setenv("MICROSCOPE_JOB_RESEND_SECONDS", "2")
    monkeypatch.setenv("MICROSCOPE_RECONCILE_SECONDS", "1")
    monkeypatch.setenv("MICROSCOPE_JOB_LEASE_SECONDS", "4")
    get_settings.cache_clear()
    yield r
    r.stop()


def _states(url: str, ids: list[int]) -> dict[int, str]:
    with session_scope(url) as s:
        return dict(s.execute(select(Job.id, Job.state).where(Job.id.in_(ids))).all())


def test_redis_down_at_enqueue_and_restarted_mid_run(client, admin, redis, tmp_path) -> None:
    url = get_settings().database_url
    # 1. Redis is down: the API still answers 202 and the jobs wait, queued, in the table.
    t0 = time.monotonic()
    down = []
    for i in range(2):
        body = {"path": str(_folder(tmp_path, f"down{i}", i)), "slug": f"down{i}"}
        r = client.post("/api/v1/datasets", json=body, headers=admin)
        assert r.status_code == 202, r.text
        down.append(r.json()["job"]["id"])
    assert set(_states(url, down).values()) == {"queued"}
    # 2. Redis comes back, empty; a worker starts; its reconciler sends the lost jobs again.
    redis.start()
    log = OUTPUT / "worker-broker-loss.log"
    proc = worker(dict(os.environ), log, "broker-loss")
    try:
        wait_for(lambda: set(_states(url, down).values()) == {"succeeded"}, 120, "lost jobs")
        # 3. More jobs; Redis is restarted (losing every message) while they run.
        more = []
        for i in range(4):
            body = {"path": str(_folder(tmp_path, f"more{i}", 10 + i)), "slug": f"more{i}"}
            r = client.post("/api/v1/datasets", json=body, headers=admin)
            more.append(r.json()["job"]["id"])
        wait_for(lambda: "running" in _states(url, more).values(), 60, "a job running")
        redis.stop()
        time.sleep(1.0)
        redis.start()
        wait_for(lambda: set(_states(url, more).values()) == {"succeeded"}, 120, "every job")
    finally:
        stop(proc)
    with session_scope(url) as s:
        counts = s.scalars(select(Dataset.image_count)).all()
    assert counts == [IMAGES] * 6  # every dataset imported whole, none twice
    OUTPUT.mkdir(exist_ok=True)
    (OUTPUT / "broker_loss.json").write_text(
        json.dumps({"jobs": len(down) + len(more), "lost": 0, "seconds": time.monotonic() - t0})
    )
