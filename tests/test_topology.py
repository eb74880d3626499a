"""The scaled-out topology, run with the commands docker-compose.yml runs (issue #15).

PostgreSQL, Redis and a real S3 server (SeaweedFS's gateway); two API processes
(``microscope serve``) on two ports and two Celery workers (``microscope worker``) with the
``interactive``, ``gpu`` and ``cpu`` queues split between them, all four started at once on
an empty database (the migrations take an advisory lock). Every process has a data folder of
its own: the database, the broker and the object store are all they share. Through the first
API: register the model, import a dataset, mine it in shards (the ``gpu`` queue, which both
workers take), render feature visualizations (``interactive``: the first worker only), build
the text views; then the second API serves the unit page with what the workers wrote.

Runs in the test command's PostgreSQL + Redis pass; the SQLite pass has no such services.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, select, text, update

from backend.db.models import Layer, Model
from backend.db.session import session_scope
from contracts.jobs import TASK_FEATVIS, TASK_MINE_SHARD
from tests.conftest import ADMIN_TOKEN, BROKER_ENV, DB_ENV, OUTPUT
from tests.reliability.services import free_port, stop, wait_for
from tests.seaweedfs import S3Server
from tests.workers.test_mining_task import photos

pytestmark = [pytest.mark.celery, pytest.mark.slow]

BIN = Path(sys.executable).parent  # the `microscope` console script beside this interpreter
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
QUEUES = ("interactive,gpu", "gpu,cpu")
IMAGES, SHARD = 24, 4  # six shards: enough that both workers take some
LAYER = "blocks.0"


def _redis_db(url: str, db: int) -> str:
    """The same Redis server, another database: no message of another test reaches us."""
    return re.sub(r"(/\d+)?$", f"/{db}", url.rstrip("/"), count=1)


@pytest.fixture
def services(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A fresh, unmigrated PostgreSQL database and an emptied Redis database."""
    base, broker = os.environ.get(DB_ENV, ""), os.environ.get(BROKER_ENV, "")
    if not base.startswith("postgresql") or not broker.startswith("redis"):
        pytest.skip("needs PostgreSQL and Redis (the test command's second pass)")
    import redis

    broker = _redis_db(broker, 13)
    redis.Redis.from_url(broker).flushdb()
    name = f"microscope_topo_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield base.rsplit("/", 1)[0] + "/" + name, broker
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _env(db: str, broker: str, s3: S3Server, datasets: Path, data: Path) -> dict[str, str]:
    """docker-compose.yml's environment, with this test's services and folders."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith("MICROSCOPE_")}
    return {
        **keep,
        "HF_HUB_OFFLINE": "1",
        "MICROSCOPE_ENV": "production",
        "MICROSCOPE_DATABASE_URL": db,
        "MICROSCOPE_BROKER_URL": broker,
        "MICROSCOPE_STORAGE_URL": f"s3://topology-{uuid.uuid4().hex[:8]}",
        "MICROSCOPE_S3_ENDPOINT_URL": s3.endpoint_url,
        "MICROSCOPE_S3_ACCESS_KEY": s3.access_key,
        "MICROSCOPE_S3_SECRET_KEY": s3.secret_key,
        "MICROSCOPE_CORS_ORIGINS": "[]",
        "MICROSCOPE_DATASET_ROOTS": json.dumps([str(datasets)]),
        "MICROSCOPE_ADMIN_TOKEN": ADMIN_TOKEN,
        "MICROSCOPE_DATA_DIR": str(data),
        # Small enough for a CPU: shards of four images, short renders.
        "MICROSCOPE_MINING_SHARD_SIZE": str(SHARD),
        "MICROSCOPE_FEATVIS_STEPS": "16",
    }


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(BIN / "microscope"), *args],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )


def _wait_jobs(api: httpx.Client, procs: list[subprocess.Popen[bytes]], timeout: float) -> list:  # type: ignore[type-arg]
    """Every job in the database once none is queued or running (the parents' spawned shard
    and render jobs included)."""

    def all_jobs() -> list[dict]:  # type: ignore[type-arg]
        out, url = [], "/api/v1/jobs?limit=500"
        while url:
            page = api.get(url).raise_for_status().json()
            out += page["items"]
            url = page["next"]
        return out

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = all_jobs()
        if jobs and all(j["state"] in ("succeeded", "failed", "cancelled") for j in jobs):
            return jobs
        assert all(p.poll() is None for p in procs), "a process of the topology exited"
        time.sleep(1.0)
    pending = [(j["id"], j["kind"], j["state"], j["message"]) for j in all_jobs()]
    raise AssertionError(f"jobs still pending after {timeout} s: {pending}")


def _done(api: httpx.Client, job_id: int, procs: list[subprocess.Popen[bytes]]) -> None:
    def finished() -> bool:
        assert all(p.poll() is None for p in procs), "a process of the topology exited"
        job = api.get(f"/api/v1/jobs/{job_id}").raise_for_status().json()
        assert job["state"] != "failed", job
        return bool(job["state"] == "succeeded")

    wait_for(finished, 300, f"job {job_id}", every=0.5)


def test_two_apis_and_two_workers_on_postgres_redis_and_s3(
    services: tuple[str, str], s3_server: S3Server, tmp_path: Path
) -> None:
    db, broker = services
    datasets = tmp_path / "datasets"
    datasets.mkdir()
    folder = photos(datasets, n=IMAGES)
    OUTPUT.mkdir(exist_ok=True)
    logs = {n: OUTPUT / f"topology-{n}.log" for n in ("api1", "api2", "worker1", "worker2")}
    envs = {n: _env(db, broker, s3_server, datasets, tmp_path / n) for n in logs}
    bucket = envs["api1"]["MICROSCOPE_STORAGE_URL"].removeprefix("s3://")
    for env in envs.values():  # one object store for all
        env["MICROSCOPE_STORAGE_URL"] = f"s3://{bucket}"
    ports = {"api1": free_port(), "api2": free_port()}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        # All four at once, as `docker-compose up` starts them.
        for n, port in ports.items():
            procs[n] = _start(
                ["serve", "--host", "127.0.0.1", "--port", str(port)], envs[n], logs[n]
            )
        for n, queues in zip(("worker1", "worker2"), QUEUES, strict=True):
            procs[n] = _start(
                ["worker", "--queues", queues, "--concurrency", "1"], envs[n], logs[n]
            )
        live = list(procs.values())
        api1 = httpx.Client(base_url=f"http://127.0.0.1:{ports['api1']}", timeout=30)
        api2 = httpx.Client(base_url=f"http://127.0.0.1:{ports['api2']}", timeout=30)
        for api in (api1, api2):
            wait_for(lambda a=api: a.get("/healthz").status_code == 200, 120, "an API process")

        ds = (
            api1.post(
                "/api/v1/datasets", json={"path": str(folder), "slug": "photos"}, headers=AUTH
            )
            .raise_for_status()
            .json()
        )
        reg = api1.post("/api/v1/models", json={"spec": "default"}, headers=AUTH)
        model = reg.raise_for_status().json()
        slug = model["model"]["slug"]
        _done(api2, ds["job"]["id"], live)
        _done(api2, model["job"]["id"], live)
        assert api2.get("/api/v1/datasets/photos").json()["image_count"] == IMAGES
        with session_scope(db) as s:  # one default layer: minutes of CPU, not hours
            model_id = s.scalar(select(Model.id).where(Model.slug == slug))
            s.execute(
                update(Layer)
                .where(Layer.model_id == model_id, Layer.name != LAYER)
                .values(is_default=False)
            )

        mine = api1.post(
            f"/api/v1/models/{slug}/examples", json={"dataset": "photos"}, headers=AUTH
        )
        texts = api1.post(
            f"/api/v1/models/{slug}/text",
            json={"dataset": "photos", "climb_units": 0},
            headers=AUTH,
        )
        unit_api = f"/api/v1/models/{slug}/layers/{LAYER}/units"
        renders = [api1.post(f"{unit_api}/{u}/featvis", headers=AUTH) for u in (0, 1)]
        for r in (mine, texts, *renders):
            assert r.status_code == 202, r.text
        jobs = _wait_jobs(api2, live, timeout=900)

        failed = [(j["id"], j["kind"], j["error"]) for j in jobs if j["state"] != "succeeded"]
        assert not failed, failed
        shards = [j for j in jobs if j["kind"] == "mine_shard"]
        assert len(shards) == IMAGES // SHARD
        # Shards went to both workers; renders (interactive) only to the first.
        ran = {n: logs[n].read_text(errors="replace") for n in ("worker1", "worker2")}
        done_shards = {
            n: len(re.findall(rf"{TASK_MINE_SHARD}\[[^\]]+\] succeeded", t)) for n, t in ran.items()
        }
        assert all(done_shards.values()), done_shards
        assert sum(done_shards.values()) == len(shards), done_shards
        assert re.search(rf"{TASK_FEATVIS}\[[^\]]+\] succeeded", ran["worker1"])
        assert not re.search(rf"{TASK_FEATVIS}\[", ran["worker2"])

        # The second API serves what the workers wrote to S3.
        unit = api2.get(f"{unit_api}/0").raise_for_status().json()
        kinds = {a["kind"] for a in unit["artifacts"]}
        assert {"dataset_examples", "example_crop", "featvis", "text_fv"} <= kinds, kinds
        crop = next(
            a for a in unit["artifacts"] if (a["kind"], a["variant"]) == ("example_crop", "top")
        )
        img = api2.get(crop["url"])
        assert img.status_code == 200 and img.content[:3] == b"\xff\xd8\xff"  # a JPEG
        fv = next(a for a in unit["artifacts"] if a["kind"] == "featvis")
        assert api2.get(fv["url"]).status_code == 200
        page = f"/models/{slug}/{LAYER}/0"
        html = {"Accept": "text/html"}
        examples = api2.get(f"{page}?view=examples", headers=html)
        assert examples.status_code == 200 and crop["url"] in examples.text
        rendered = api2.get(f"{page}?view=featvis", headers=html)
        assert rendered.status_code == 200 and fv["url"] in rendered.text
        hits = api2.get("/api/v1/search", params={"q": "espresso", "mode": "text"}).json()
        assert hits and all(h["model"] == slug for h in hits)

        listed = s3_server.client().list_objects_v2(Bucket=bucket)
        keys = [o["Key"] for o in listed["Contents"]]
        assert any(k.startswith("runs/mining/") for k in keys)
        for n in ("api1", "api2", "worker1", "worker2"):  # nothing went to local disk
            objects = tmp_path / n / "objects"
            assert not objects.exists() or not any(objects.iterdir())
    finally:
        for p in procs.values():
            stop(p)
