"""Proof 6, auth: every write in the app's route table refuses a missing or wrong token or
session, and changes nothing; with the token, each is reached (so the walk is real)."""

from __future__ import annotations

import re

import pytest
from fastapi.routing import APIRoute
from sqlalchemy import func, select
from starlette.routing import Route

from backend.auth import ADMIN_COOKIE, PUBLIC_WRITES
from backend.db.models import Family, Job, Unit
from backend.families.service import FamilyCreate, create_family
from tests.conftest import ADMIN_TOKEN
from tests.factories import make_layer, make_model

WRITES = {"POST", "PUT", "PATCH", "DELETE"}
PARAMS = {"model": "tiny", "layer": "blocks.1", "unit": "1", "slug": "stripes", "key": "x"}
WRONG = [
    {},
    {"Authorization": "Bearer wrong-token"},
    {"Authorization": f"Basic {ADMIN_TOKEN}"},
    {"X-Admin-Token": "wrong-token"},
    {"Cookie": f"{ADMIN_COOKIE}={ADMIN_TOKEN}"},  # the raw token is not a session
    {"Cookie": f"{ADMIN_COOKIE}=eyJhZG1pbiI6dHJ1ZX0.forged.signature"},
]


def _routes(routes, prefix: str = ""):  # type: ignore[no-untyped-def]
    """(path, methods) of every route, routers included by the app flattened (FastAPI keeps
    an included router whole, with its prefix, in the app's table)."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from _routes(included.routes, prefix + route.include_context.prefix)
        elif isinstance(route, APIRoute | Route):
            yield prefix + route.path, route.methods or set()


def _writes(app) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    return sorted((m, path) for path, methods in _routes(app.routes) for m in methods & WRITES)


def _concrete(path: str, job_id: int) -> str:
    values = {**PARAMS, "job_id": str(job_id)}
    return re.sub(r"{(\w+)(:\w+)?}", lambda m: values[m.group(1)], path)


def _counts(session) -> tuple[int, ...]:  # type: ignore[no-untyped-def]
    session.expire_all()
    return (
        session.scalar(select(func.count(Family.id))),
        session.scalar(select(func.count(Job.id))),
        session.scalar(select(func.count(Unit.id)).where(Unit.label.is_not(None))),
    )


@pytest.fixture
def job_id(session) -> int:
    m = make_model(session, "tiny")
    make_layer(session, m, "blocks.1", units=4)
    create_family(session, FamilyCreate(name="Stripes"))
    job = Job(kind="featvis", dedupe_key="k", params={}, state="failed", error="x")
    session.add(job)
    session.commit()
    return job.id


def test_every_write_refuses_a_missing_or_wrong_credential(client, session, job_id) -> None:
    writes = [(m, p) for m, p in _writes(client.app) if p not in PUBLIC_WRITES]
    assert len(writes) >= 20, writes  # the whole table, API and pages
    before = _counts(session)
    for method, path in writes:
        url = _concrete(path, job_id)
        for headers in WRONG:
            client.cookies.clear()
            for accept in ("application/json", "text/html"):
                r = client.request(
                    method, url, headers={**headers, "Accept": accept}, data={"name": "x"}
                )
                assert r.status_code == 401, (method, url, headers, r.status_code)
    assert _counts(session) == before  # nothing was written


def test_with_the_token_every_write_is_reached(client, job_id, admin) -> None:
    for method, path in _writes(client.app):
        if path in PUBLIC_WRITES:
            continue
        r = client.request(method, _concrete(path, job_id), headers=admin, json={})
        assert r.status_code not in (401, 404, 405), (method, path, r.status_code, r.text)


def test_public_writes_need_the_token_in_their_body(client) -> None:
    r = client.post("/admin/login", data={"token": "wrong"}, follow_redirects=False)
    assert r.status_code == 401 and ADMIN_COOKIE not in client.cookies
    r = client.post("/admin/logout", follow_redirects=False)
    assert r.status_code == 303 and ADMIN_COOKIE not in client.cookies
