"""Visitors see what failed, never a traceback or the server's file layout."""

from __future__ import annotations

from backend.db.models import Job
from backend.redact import scrub
from contracts.jobs import JobState

ERROR = "FileNotFoundError: dataset folder /srv/secret/photos is not reachable from this worker"
MESSAGE = 'Traceback (most recent call last):\n  File "/opt/app/workers/tasks/x.py", line 3'


def test_scrub_cuts_file_paths_and_keeps_site_urls() -> None:
    assert scrub(ERROR) == (
        "FileNotFoundError: dataset folder …/photos is not reachable from this worker"
    )
    assert scrub("see /api/v1/models/tiny/layers?all=true") == (
        "see /api/v1/models/tiny/layers?all=true"
    )
    assert "/opt/" not in (scrub(MESSAGE) or "") and "Traceback" not in (scrub(MESSAGE) or "")
    assert scrub("timm:resnet18@/home/me/w.safetensors") == "timm:resnet18@…/w.safetensors"


def test_jobs_api_and_pages_show_no_paths_or_tracebacks(client, session) -> None:
    job = Job(
        kind="import_dataset",
        dedupe_key="import_dataset:x",
        params={"dataset_id": 1, "source": "/srv/secret/photos"},
        state=JobState.FAILED,
        error=ERROR,
        message=MESSAGE,
    )
    session.add(job)
    session.commit()
    bodies = [
        client.get("/api/v1/jobs").text,
        client.get(f"/api/v1/jobs/{job.id}").text,
        client.get("/jobs", headers={"accept": "text/html"}).text,
        client.get(f"/partials/job/{job.id}").text,
        client.get("/partials/progress").text,
    ]
    for body in bodies:
        assert "/srv/secret" not in body and "/opt/app" not in body, body
        assert "Traceback" not in body
    assert "is not reachable from this worker" in bodies[1]  # what failed is still said
