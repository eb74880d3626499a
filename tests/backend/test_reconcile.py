"""The jobs table is the truth: stuck jobs are found and sent again."""

from __future__ import annotations

import socket
import time
from datetime import UTC, timedelta

import pytest
from sqlalchemy.orm import Session

from backend.config import get_settings
from backend.db.base import utcnow
from backend.db.models import Dataset, Job, Model
from backend.jobs.enqueue import _PENDING
from backend.jobs.reconcile import reconcile
from backend.jobs.service import retry_job
from tests.factories import make_model

LONG_AGO = timedelta(hours=1)


def _sent(session: Session) -> list[int]:
    return [t.job_id for t in session.info.get(_PENDING, [])]


def _job(session: Session, key: str, **fields: object) -> Job:
    job = Job(kind="featvis", dedupe_key=key, params={}, **fields)
    session.add(job)
    session.flush()
    return job


def test_a_running_job_whose_lease_expired_is_requeued_with_its_model(session) -> None:
    m = make_model(session, "tiny", state="registering")
    now = utcnow()
    dead = Job(
        kind="register_model",
        dedupe_key="r",
        params={},
        model_id=m.id,
        state="running",
        worker="gone:1",
        lease_expires_at=now - timedelta(seconds=1),
    )
    alive = _job(session, "a", state="running", worker="w:2", lease_expires_at=now + LONG_AGO)
    session.add(dead)
    session.flush()
    done = reconcile(session, resend_after=60, now=now)
    assert done.requeued == [dead.id] and _sent(session) == [dead.id]
    assert dead.state == "queued" and dead.worker is None and "gone:1" in (dead.message or "")
    assert session.get(Model, m.id).state == "pending"  # its registration starts over
    assert alive.state == "running"


def test_an_importing_dataset_goes_back_to_pending(session) -> None:
    ds = Dataset(slug="d", source="/x", state="importing")
    session.add(ds)
    session.flush()
    job = Job(kind="import_dataset", dedupe_key="i", params={}, dataset_id=ds.id, state="running")
    session.add(job)
    session.flush()
    assert reconcile(session, resend_after=60).requeued == [job.id]
    assert ds.state == "pending"


def test_queued_jobs_are_sent_again_only_after_a_silence_that_doubles(session) -> None:
    now = utcnow()
    fresh = _job(session, "f", state="queued", created_at=now, sent_at=now)
    lost = _job(session, "l", state="queued", created_at=now - LONG_AGO, sent_at=now - LONG_AGO)
    assert reconcile(session, resend_after=60, now=now).resent == [lost.id]
    assert lost.sent_at == now
    # Sent an hour after it was queued: the next send waits another hour, not a minute; the
    # fresh job's first re-send waits RESEND seconds.
    assert reconcile(session, resend_after=60, now=now + timedelta(minutes=5)).resent == [
        fresh.id
    ]
    later = reconcile(session, resend_after=60, now=now + timedelta(minutes=61))
    assert later.resent == [fresh.id, lost.id]
    # At start-up every queued job is sent (nothing sent before can be trusted).
    session.info.clear()
    assert reconcile(session, resend_after=60, now=now, startup=True).resent == [
        fresh.id,
        lost.id,
    ]


def test_retry_sends_stuck_jobs_too(session) -> None:
    now = utcnow()
    queued = _job(session, "q", state="queued", sent_at=now - LONG_AGO)
    stuck = _job(session, "s", state="running", lease_expires_at=now - timedelta(seconds=5))
    busy = _job(session, "b", state="running", lease_expires_at=now + LONG_AGO)
    failed = _job(session, "x", state="failed", error="boom")
    for job in (queued, stuck, busy, failed):
        retry_job(session, job)
    assert sorted(_sent(session)) == sorted([queued.id, stuck.id, failed.id])
    assert (stuck.state, busy.state, failed.state) == ("queued", "running", "queued")


def test_retry_through_the_api_on_a_stuck_job(client, session, admin) -> None:
    job = _job(session, "q", state="queued", sent_at=utcnow() - LONG_AGO)
    session.commit()
    r = client.post(f"/api/v1/jobs/{job.id}/retry", headers=admin)
    assert r.status_code == 200 and r.json()["state"] == "queued"
    session.expire_all()
    sent = session.get(Job, job.id).sent_at
    assert sent.replace(tzinfo=UTC) > utcnow() - timedelta(minutes=1)  # SQLite: naive UTC


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.once
def test_broker_down_at_enqueue_answers_202_and_leaves_the_job_queued(
    client, admin, monkeypatch
) -> None:
    monkeypatch.setenv("MICROSCOPE_BROKER_URL", f"redis://127.0.0.1:{_closed_port()}/0")
    get_settings.cache_clear()
    t0 = time.monotonic()
    r = client.post("/api/v1/models", json={"spec": "timm:resnet18"}, headers=admin)
    assert r.status_code == 202, r.text
    assert time.monotonic() - t0 < 30  # the broker's retries are bounded
    job = r.json()["job"]
    assert job["state"] == "queued"
    assert client.get(f"/api/v1/jobs/{job['id']}").json()["state"] == "queued"
