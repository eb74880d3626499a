"""Jobs are sent by name only after commit, dropped on rollback, and idempotent."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from backend.db.models import Job
from backend.jobs.enqueue import celery_client
from backend.jobs.service import enqueue_job
from contracts.jobs import RegisterModelParams


def queued_messages(queue: str = "cpu") -> int:
    with celery_client().connection_for_write() as conn:
        return int(conn.default_channel.queue_declare(queue, passive=False).message_count)


def purge(queue: str = "cpu") -> None:
    with celery_client().connection_for_write() as conn:
        conn.default_channel.queue_purge(queue)


@pytest.fixture
def empty_queue(settings):  # type: ignore[no-untyped-def]
    purge()
    yield
    purge()


def _enqueue(session, n: int = 1) -> Job:  # type: ignore[no-untyped-def]
    return enqueue_job(session, RegisterModelParams(model_id=n, spec="default"), queue="cpu")


def test_message_is_sent_only_after_commit(session, empty_queue) -> None:
    _enqueue(session)
    session.flush()
    assert queued_messages() == 0
    session.commit()
    assert queued_messages() == 1


def test_message_is_dropped_on_rollback(session, empty_queue) -> None:
    _enqueue(session)
    session.flush()
    session.rollback()
    session.commit()  # nothing pending survives the rollback
    assert queued_messages() == 0
    assert session.scalar(select(func.count(Job.id))) == 0


def test_enqueue_is_idempotent_and_revives_failed_jobs(session, empty_queue) -> None:
    a = _enqueue(session)
    session.commit()
    b = _enqueue(session)
    session.commit()
    assert a.id == b.id and queued_messages() == 1
    b.state = "failed"
    b.error = "boom"
    session.commit()
    c = _enqueue(session)
    session.commit()
    assert c.id == a.id and c.state == "queued" and c.error is None
    assert queued_messages() == 2


def test_failed_jobs_can_be_retried_by_an_admin(client, session, admin, empty_queue) -> None:
    job = _enqueue(session)
    session.commit()
    purge()
    job.state = "failed"
    job.error = "boom"
    session.commit()
    assert client.post(f"/api/v1/jobs/{job.id}/retry").status_code == 401
    r = client.post(f"/api/v1/jobs/{job.id}/retry", headers=admin)
    assert r.status_code == 200 and r.json()["state"] == "queued" and r.json()["error"] is None
    assert queued_messages() == 1
    page = client.get("/jobs", headers={"Accept": "text/html"}).text
    assert "register model" in page


def test_with_spawned_follows_a_run_and_what_it_queued_only(session) -> None:
    from backend.jobs.repository import JobRepository
    from tests.factories import make_dataset, make_job, make_model

    m, other = make_model(session, "mine"), make_model(session, "theirs")
    ds = make_dataset(session)
    early_block = make_job(session, "featvis", model=m)  # before the bulk job: not its own
    mine = make_job(session, "mine_examples", state="succeeded", model=m, dataset=ds)
    bulk = make_job(session, "featvis_bulk", state="succeeded", queue="cpu", model=m)
    shard = make_job(session, "mine_shard", state="running", model=m, dataset=ds)
    block = make_job(session, "featvis", model=m)
    asked = make_job(session, "featvis", queue="interactive", model=m)  # from a unit page
    theirs = make_job(session, "mine_shard", model=other, dataset=ds)
    later = make_job(session, "register_model", model=other)

    followed = JobRepository(session).with_spawned([mine.id, bulk.id])

    assert [j.id for j in followed] == [mine.id, bulk.id, shard.id, block.id]
    assert not {early_block.id, asked.id, theirs.id, later.id} & {j.id for j in followed}
