"""Proof 1, worker crash: a real Celery worker is killed with SIGKILL at random points during
mining and during feature visualization (its pool process, and once the whole worker), at
least KILLS times; after each restart every job completes, the artifacts are byte-identical to
an uninterrupted run, no partial object is visible, and the job rows are consistent."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import socket
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select, update

from backend.catalog.service import add_model
from backend.config import get_settings
from backend.datasets.service import add_dataset
from backend.db.migrate import upgrade
from backend.db.models import Artifact, Dataset, Job, Layer, Model
from backend.db.session import session_scope
from backend.precompute import queue_featvis_blocks, request_examples
from tests.reliability.services import OUTPUT, Redis, children, stop, wait_for, worker

pytestmark = pytest.mark.once

SPEC = "timm:test_efficientnet"  # random init (seeded): tiny and offline
LAYERS = ("blocks.1", "blocks.2")  # two of the default layers layer discovery registers
IMAGES = 32
FEATVIS_UNITS = 4
STEPS = 48  # optimisation steps per render (512 by default): long enough for every kill to land
MINING, FEATVIS = ("mine_examples", "mine_shard"), ("featvis",)
KILLS = {MINING: 6, FEATVIS: 6}  # 12 in all, the first featvis one of the whole worker


def _photos(root: Path) -> Path:
    folder = root / "photos"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(IMAGES):
        arr = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
        arr[:: 1 + i % 5, :, i % 3] = 255  # stripes of different frequencies and colours
        Image.fromarray(arr).save(folder / f"img{i:02d}.png")
    return folder


def _catalog(url: str, folder: Path) -> tuple[int, int, int, int]:
    with session_scope(url) as s:
        ds, ds_job = add_dataset(s, str(folder), "photos")
        m, m_job = add_model(s, SPEC)
        return ds.id, m.id, ds_job.id, m_job.id


def _keep_two_default_layers(url: str, model_id: int) -> None:
    with session_scope(url) as s:
        s.execute(
            update(Layer)
            .where(Layer.model_id == model_id, Layer.name.not_in(LAYERS))
            .values(is_default=False)
        )


def _mining(url: str, model_id: int, ds_id: int) -> int:
    with session_scope(url) as s:
        return request_examples(s, s.get(Model, model_id), s.get(Dataset, ds_id)).id


def _featvis(url: str, model_id: int) -> list[int]:
    with session_scope(url) as s:
        return [j.id for j in queue_featvis_blocks(s, s.get(Model, model_id), FEATVIS_UNITS)]


def _objects(root: Path) -> dict[str, str]:
    """sha256 of every object a reader could see (temporary .part files are not objects)."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.startswith(".tmp-")
    }


def _states(url: str, kinds: Iterable[str] | None = None) -> dict[int, str]:
    q = select(Job.id, Job.state)
    if kinds is not None:
        q = q.where(Job.kind.in_(list(kinds)))
    with session_scope(url) as s:
        return dict(s.execute(q).all())


def _baseline(settings, folder: Path) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """The same work, uninterrupted, in this process."""
    import torch

    from workers.tasks.catalog import register
    from workers.tasks.datasets import import_folder
    from workers.tasks.featvis import render
    from workers.tasks.jobrun import Waiting, run_job
    from workers.tasks.mining import mine, mine_shard

    torch.set_num_threads(2)  # as the worker (OMP_NUM_THREADS below)
    url = settings.database_url
    ds_id, model_id, ds_job, m_job = _catalog(url, folder)
    assert run_job(ds_job, import_folder) == "succeeded"
    assert run_job(m_job, register) == "succeeded"
    _keep_two_default_layers(url, model_id)
    mine_job = _mining(url, model_id, ds_id)
    with pytest.raises(Waiting):  # queues its shards
        run_job(mine_job, mine)
    for j in _states(url, ["mine_shard"]):
        assert run_job(j, mine_shard) == "succeeded"
    assert run_job(mine_job, mine) == "succeeded"
    for j in _featvis(url, model_id):
        assert run_job(j, render) == "succeeded"
    return _objects(Path(settings.storage_url.removeprefix("file://")))


class Killer:
    """Kills the worker at random moments while a job of the phase runs."""

    def __init__(self, url: str, env: dict[str, str], log: Path) -> None:
        self.url, self.env, self.log = url, env, log
        self.rng = random.Random(14)
        self.kills: list[str] = []
        self.proc = worker(env, log, "crash", pool="prefork")

    def _pool_running(self, kinds: Iterable[str]) -> int | None:
        """The pool process, while it runs a job of ``kinds`` (it holds the job's lease)."""
        pool = children(self.proc.pid)
        if not pool:
            return None
        holder = f"{socket.gethostname()}:{pool[0]}"
        with session_scope(self.url) as s:
            held = s.scalar(
                select(Job.id).where(
                    Job.state == "running", Job.kind.in_(list(kinds)), Job.worker == holder
                )
            )
        return pool[0] if held is not None else None

    def phase(self, kinds: tuple[str, ...], kills: int, whole_first: bool = False) -> None:
        """Kill ``kills`` times during jobs of ``kinds``, then let every one of them finish."""
        done = 0
        longest = 0.6  # the latest point after a job starts at which it is killed
        deadline = time.monotonic() + 420
        while done < kills and time.monotonic() < deadline:
            if self._pool_running(kinds) is None:
                if set(_states(self.url, kinds).values()) == {"succeeded"}:
                    break  # finished before every kill landed: the count below says so
                time.sleep(0.05)
                continue
            time.sleep(self.rng.uniform(0.02, longest))  # a random point in the job
            pid = self._pool_running(kinds)
            if pid is None:  # it finished first: aim earlier (a fast machine's jobs are short)
                longest = max(0.05, longest / 2)
                continue
            if whole_first and done == 0:
                stop(self.proc, signal.SIGKILL)  # the whole worker: its messages are lost
                self.kills.append(f"worker during {kinds[0]}")
                self.proc = worker(self.env, self.log, "crash", pool="prefork")
            else:
                os.kill(pid, signal.SIGKILL)
                self.kills.append(f"pool process during {kinds[0]}")
                wait_for(lambda p=pid: children(self.proc.pid) not in ([], [p]), 60, "respawn")
            done += 1
        assert done == kills, f"only {done} kills landed during {kinds}"
        wait_for(
            lambda: set(_states(self.url, kinds).values()) == {"succeeded"},
            300,
            f"every {kinds} job after the kills",
            every=0.3,
        )


def test_kill_9_during_mining_and_featvis(settings, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MICROSCOPE_FEATVIS_STEPS", str(STEPS))
    get_settings.cache_clear()
    folder = _photos(tmp_path)
    expected = _baseline(get_settings(), folder)

    # The same work again, in a fresh database and store, on a worker that keeps being killed.
    url = f"sqlite:///{tmp_path / 'crash.sqlite'}"
    store = tmp_path / "crash-objects"
    redis = Redis()
    redis.start()
    quick = {
        "MICROSCOPE_DATABASE_URL": url,
        "MICROSCOPE_STORAGE_URL": f"file://{store}",
        "MICROSCOPE_BROKER_URL": redis.url,
        "MICROSCOPE_JOB_LEASE_SECONDS": "3",
        "MICROSCOPE_RECONCILE_SECONDS": "1",
        "MICROSCOPE_JOB_RESEND_SECONDS": "3",
    }
    for k, v in quick.items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    upgrade(url)
    env = {**os.environ, "OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1"}
    t0 = time.monotonic()
    killer = Killer(url, env, OUTPUT / "worker-crash.log")
    try:
        ds_id, model_id, ds_job, m_job = _catalog(url, folder)
        wait_for(lambda: set(_states(url).values()) == {"succeeded"}, 300, "registered")
        _keep_two_default_layers(url, model_id)
        _mining(url, model_id, ds_id)
        killer.phase(MINING, KILLS[MINING])
        _featvis(url, model_id)
        killer.phase(FEATVIS, KILLS[FEATVIS], whole_first=True)
    finally:
        stop(killer.proc)
        redis.stop()
    got = _objects(store)
    assert got == expected  # byte-identical, nothing missing, nothing extra or partial
    with session_scope(url) as s:
        jobs = s.scalars(select(Job)).all()
        assert {j.state for j in jobs} == {"succeeded"}
        assert all(j.worker is None and j.lease_expires_at is None for j in jobs)
        keys = s.scalars(select(Artifact.storage_key)).all()
        assert keys and all(k in got for k in keys)  # every row points at a whole object
        attempts = sum(j.attempts for j in jobs)
    OUTPUT.mkdir(exist_ok=True)
    (OUTPUT / "worker_crash.json").write_text(
        json.dumps(
            {
                "kills": len(killer.kills),
                "kill_points": killer.kills,
                "jobs": len(jobs),
                "attempts": attempts,
                "objects": len(got),
                "identical": True,
                "seconds": round(time.monotonic() - t0, 1),
            }
        )
    )
