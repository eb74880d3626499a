"""Running jobs hold a lease renewed by a heartbeat; waits end (a failed dependency, a
deadline); a duplicate message for a job running elsewhere does nothing."""

from __future__ import annotations

import socket
import subprocess
import time
from datetime import timedelta

import pytest

from backend.config import get_settings
from backend.db.base import utcnow
from backend.db.models import Dataset, Job
from backend.db.session import session_scope
from backend.jobs.service import enqueue_job
from contracts.jobs import MineExamplesParams, RenderedWordsParams
from tests.factories import make_model
from workers.tasks.jobrun import (
    RUNNING_ELSEWHERE,
    DependencyFailed,
    WaitedTooLong,
    Waiting,
    run_job,
)
from workers.tasks.text import rendered_words


def _job(url: str, key: str = "k", **fields: object) -> int:
    with session_scope(url) as s:
        job = Job(kind="featvis", dedupe_key=key, params={}, **fields)
        s.add(job)
        s.flush()
        return job.id


def _row(url: str, job_id: int) -> Job:
    with session_scope(url) as s:
        job = s.get(Job, job_id)
        assert job is not None
        s.expunge(job)
        return job


def test_a_running_job_holds_a_lease_renewed_by_its_heartbeat(settings, monkeypatch) -> None:
    monkeypatch.setenv("MICROSCOPE_JOB_LEASE_SECONDS", "0.4")
    get_settings.cache_clear()
    url = settings.database_url
    job_id = _job(url)
    seen = []

    def work(session, job, progress) -> str:  # type: ignore[no-untyped-def]
        for _ in range(3):
            time.sleep(0.35)
            seen.append(_row(url, job_id))
        return "done"

    assert run_job(job_id, work) == "succeeded"
    assert all(j.state == "running" and j.worker for j in seen)
    beats = [j.heartbeat_at for j in seen]
    assert beats[-1] > beats[0]  # renewed while the work ran
    assert all(j.lease_expires_at > j.heartbeat_at for j in seen)
    done = _row(url, job_id)
    assert (done.worker, done.lease_expires_at) == (None, None)  # released when finished


def test_a_duplicate_message_for_a_job_running_elsewhere_does_nothing(settings) -> None:
    url = settings.database_url
    lease = utcnow() + timedelta(minutes=5)
    job_id = _job(url, state="running", worker="other:1", lease_expires_at=lease, attempts=1)
    ran = []
    assert run_job(job_id, lambda s, j, p: ran.append(1) or "x") == RUNNING_ELSEWHERE
    assert ran == [] and _row(url, job_id).attempts == 1
    # Once that lease has expired (its worker died), the job is taken over.
    with session_scope(url) as s:
        s.get(Job, job_id).lease_expires_at = utcnow() - timedelta(seconds=1)
    assert run_job(job_id, lambda s, j, p: ran.append(1) or "x") == "succeeded"
    assert ran == [1] and _row(url, job_id).attempts == 2


def test_a_job_whose_holder_died_on_this_machine_is_taken_over_at_once(settings) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    url = settings.database_url
    lease = utcnow() + timedelta(minutes=5)
    holder = f"{socket.gethostname()}:{dead.pid}"
    job_id = _job(url, state="running", worker=holder, lease_expires_at=lease, attempts=1)
    assert run_job(job_id, lambda s, j, p: "x") == "succeeded"
    assert _row(url, job_id).attempts == 2


def test_waiting_has_a_deadline(settings) -> None:
    url = settings.database_url
    job_id = _job(url)

    def not_ready(session, job, progress) -> str:  # type: ignore[no-untyped-def]
        raise Waiting("waiting for something that never comes")

    with pytest.raises(Waiting):
        run_job(job_id, not_ready)
    waiting = _row(url, job_id)
    assert waiting.state == "queued" and waiting.waiting_since is not None
    assert waiting.sent_at is not None  # its retry is a live message: not re-sent
    with session_scope(url) as s:
        s.get(Job, job_id).waiting_since = utcnow() - timedelta(hours=49)
    with pytest.raises(WaitedTooLong):
        run_job(job_id, not_ready)
    failed = _row(url, job_id)
    assert failed.state == "failed" and "never comes" in (failed.error or "")


def test_a_job_whose_dependency_failed_fails_with_its_reason(settings, session) -> None:
    m = make_model(session, "tiny")
    ds = Dataset(slug="photos", source="/x", state="ready", image_count=3)
    session.add(ds)
    session.flush()
    mining = enqueue_job(
        session, MineExamplesParams(model_id=m.id, dataset_id=ds.id), model_id=m.id
    )
    words = enqueue_job(session, RenderedWordsParams(model_id=m.id, dataset_id=ds.id, words=5))
    session.info.clear()  # run in-process, not through the broker
    session.commit()
    with pytest.raises(Waiting):  # mining still queued: wait
        run_job(words.id, rendered_words)
    with session_scope(settings.database_url) as s:
        j = s.get(Job, mining.id)
        j.state, j.error = "failed", "RuntimeError: out of memory"
    with pytest.raises(DependencyFailed):
        run_job(words.id, rendered_words)
    failed = _row(settings.database_url, words.id)
    assert failed.state == "failed"
    assert "mining the dataset examples" in failed.error and "out of memory" in failed.error
