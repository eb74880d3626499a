"""The page cache: hits skip the handler, every catalog commit invalidates, nothing private
is cached, and the schema the migrations build is the one the models declare."""

from __future__ import annotations

import time

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import delete, select, text

from backend.db.base import Base
from backend.db.models import Artifact, CatalogVersion, Job, Layer, Model, Unit
from backend.db.session import get_engine
from backend.deps import ADMIN_COOKIE
from backend.storage import make_store
from tests.conftest import ADMIN_TOKEN
from tests.factories import make_artifact, make_layer, make_model

UNIT = "/api/v1/models/tiny/layers/blocks.1/units/2"
PAGE = "/models/tiny/blocks.1/2"


def _seed(session) -> None:  # type: ignore[no-untyped-def]
    m = make_model(session, "tiny")
    make_layer(session, m, "blocks.1", units=4)
    session.commit()


def _sneak_label(settings, label: str) -> None:  # type: ignore[no-untyped-def]
    """Change a label behind the ORM's back: no version bump, so only a cache would hide it."""
    with get_engine(settings.database_url).begin() as conn:
        conn.execute(text('UPDATE units SET label = :l WHERE "index" = 2'), {"l": label})


def _version(session) -> int:  # type: ignore[no-untyped-def]
    return session.execute(select(CatalogVersion.value)).scalar_one()


def test_migrations_build_the_models_schema(settings) -> None:
    with get_engine(settings.database_url).connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_a_repeat_request_is_served_from_the_cache(client, session, settings) -> None:
    _seed(session)
    first = client.get(UNIT)
    assert first.status_code == 200 and first.json()["label"] is None
    _sneak_label(settings, "sneaked")
    again = client.get(UNIT)
    # The handler did not run: the sneaked label is not seen, the bytes are the same.
    assert again.content == first.content
    assert again.headers["etag"] == first.headers["etag"]
    # A conditional repeat gets a 304 from the cache.
    r = client.get(UNIT, headers={"If-None-Match": first.headers["etag"]})
    assert r.status_code == 304 and r.content == b""


def test_a_catalog_commit_in_this_process_invalidates_at_once(client, session, settings) -> None:
    _seed(session)
    assert client.get(UNIT).json()["label"] is None
    unit = session.scalars(select(Unit).where(Unit.index == 2)).one()
    before = _version(session)
    unit.label = "dog ears"
    session.commit()
    assert _version(session) == before + 1
    assert client.get(UNIT).json()["label"] == "dog ears"
    assert "dog ears" in client.get(PAGE).text


def test_another_process_commit_is_seen_within_the_check_interval(
    client, session, settings
) -> None:
    _seed(session)
    assert client.get(UNIT).json()["label"] is None
    _sneak_label(settings, "from a worker")
    # What another process's commit does: the data and the bump, with no local signal.
    with get_engine(settings.database_url).begin() as conn:
        conn.execute(text("UPDATE catalog_version SET value = value + 1 WHERE id = 1"))
    time.sleep(settings.page_cache_check_seconds + 0.05)
    assert client.get(UNIT).json()["label"] == "from a worker"


def test_bulk_statements_bump_the_version_and_job_progress_does_not(session) -> None:
    _seed(session)
    layer = session.scalars(select(Layer)).one()
    before = _version(session)
    session.execute(delete(Artifact).where(Artifact.layer_id == layer.id))  # a bulk delete
    session.commit()
    assert _version(session) == before + 1
    # Jobs are not catalog tables: their progress does not invalidate pages.
    job = Job(kind="featvis", dedupe_key="k", params={}, state="running")
    session.add(job)
    session.commit()
    job.progress_done = 3
    session.commit()
    assert _version(session) == before + 1
    # A rolled-back change bumps nothing.
    layer.name = "renamed"
    session.flush()
    session.rollback()
    assert _version(session) == before + 1


def test_new_artifact_shows_on_the_unit_page_after_publishing(client, session, settings) -> None:
    _seed(session)
    assert "featvis" not in [a["kind"] for a in client.get(UNIT).json()["artifacts"]]
    m = session.scalars(select(Model)).one()
    layer = session.scalars(select(Layer)).one()
    make_artifact(session, make_store(settings), m, layer, 2)
    session.commit()
    assert "featvis" in [a["kind"] for a in client.get(UNIT).json()["artifacts"]]


def test_admin_and_job_requests_are_never_cached(client, session, settings) -> None:
    _seed(session)
    client.get(PAGE)
    _sneak_label(settings, "fresh for the admin")
    client.cookies.set(ADMIN_COOKIE, ADMIN_TOKEN)
    assert "fresh for the admin" in client.get(PAGE).text
    client.cookies.clear()
    assert "fresh for the admin" not in client.get(PAGE).text  # the public copy is cached
    assert "fresh for the admin" in client.get(PAGE + "?job=999").text


def test_errors_are_not_cached(client, session) -> None:
    assert client.get("/api/v1/models/tiny").status_code == 404
    _seed(session)
    assert client.get("/api/v1/models/tiny").status_code == 200
