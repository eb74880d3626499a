"""End to end through a real Celery worker process on the configured broker and database.

On the default run that is kombu's SQL transport on SQLite; the test command runs it again on
PostgreSQL + Redis.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from PIL import Image

from backend.catalog.service import add_model
from backend.datasets.service import add_dataset
from backend.db.models import Job
from backend.db.session import session_scope
from backend.jobs.reconcile import reconcile

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.celery, pytest.mark.slow]


def wait_jobs(db_url: str, ids: list[int], proc: subprocess.Popen[bytes], timeout: float = 240):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with session_scope(db_url) as s:
            jobs = {j: s.get(Job, j) for j in ids}
            states = {j: (job.state, job.error) for j, job in jobs.items() if job}
        if all(st in ("succeeded", "failed") for st, _ in states.values()):
            return states
        assert proc.poll() is None, "worker died"
        time.sleep(0.5)
    raise AssertionError(f"jobs did not finish: {states}")


def make_folder(root: Path) -> Path:
    folder = root / "photos"
    (folder / "sub").mkdir(parents=True)
    Image.new("RGB", (80, 60), (200, 30, 30)).save(folder / "red.jpg")
    Image.new("L", (64, 64), 128).save(folder / "sub" / "gray.png")
    Image.new("RGBA", (50, 70), (0, 0, 255, 128)).save(folder / "sub" / "blue.webp")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_register_and_import_through_a_real_worker(settings, client, worker, tmp_path) -> None:
    folder = make_folder(tmp_path)
    with session_scope(settings.database_url) as s:
        ds, ds_job = add_dataset(s, str(folder), "photos")
        m, m_job = add_model(s, "timm:resnet18")
        ids = [ds_job.id, m_job.id]
    states = wait_jobs(settings.database_url, ids, worker)
    assert all(st == "succeeded" for st, _ in states.values()), states

    model = client.get("/api/v1/models/resnet18-random").json()
    assert model["state"] == "ready" and model["pretrained"] is False
    assert model["weights_checksum"] and model["family"] == "resnet"
    layers = client.get("/api/v1/models/resnet18-random/layers").json()
    assert len(layers) >= 4
    last = layers[-1]
    unit = client.get(f"{last['api_url']}/units/{last['unit_count'] - 1}")
    assert unit.status_code == 200
    grid = client.get(last["url"], headers={"Accept": "text/html"})
    assert grid.status_code == 200 and f'href="{last["url"]}/95"' in grid.text
    page = client.get(f"{last['url']}/{last['unit_count'] - 1}", headers={"Accept": "text/html"})
    assert page.status_code == 200 and f"Unit {last['unit_count'] - 1}" in page.text

    dataset = client.get("/api/v1/datasets/photos").json()
    assert dataset["state"] == "ready"
    assert dataset["image_count"] == 3
    assert dataset["skipped_count"] == 1  # broken.jpg (notes.txt is not listed at all)
    assert dataset["checksum"]


def test_a_job_whose_worker_died_is_sent_again_and_finishes(
    settings, client, worker, tmp_path
) -> None:
    folder = make_folder(tmp_path)
    with session_scope(settings.database_url) as s:
        ds, job = add_dataset(s, str(folder), "photos")
        s.info.clear()  # the message is lost with its worker: never sent
        job.state = "running"
        job.attempts = 1
        job_id = job.id
    time.sleep(1.0)
    with session_scope(settings.database_url) as s:
        assert s.get(Job, job_id).state == "running"  # nobody is working on it
        assert reconcile(s, resend_after=60).requeued == [job_id]
    states = wait_jobs(settings.database_url, [job_id], worker)
    assert states[job_id][0] == "succeeded"
    with session_scope(settings.database_url) as s:
        assert s.get(Job, job_id).attempts == 2
    assert client.get("/api/v1/datasets/photos").json()["image_count"] == 3
