"""The request's transaction commits before the response: a failed commit is never a 200."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import event, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from backend.app import create_app
from backend.db.models import Unit
from tests.factories import make_layer, make_model


def test_a_write_whose_commit_fails_is_not_answered_200(settings, session, admin) -> None:
    m = make_model(session, "tiny")
    layer = make_layer(session, m, "blocks.1", units=2)
    session.commit()
    url = "/api/v1/models/tiny/layers/blocks.1/units/0/label"
    # As a real client sees it: an error raised after the response went out is not re-raised.
    client = TestClient(create_app(settings), raise_server_exceptions=False)
    event.listen(Session, "before_commit", _refuse)
    try:
        r = client.put(url, json={"label": "stripes"}, headers=admin)
    finally:
        event.remove(Session, "before_commit", _refuse)
    assert r.status_code >= 500, r.text
    assert r.json()["status"] == r.status_code
    session.expire_all()
    stored = session.scalar(select(Unit.label).where(Unit.layer_id == layer.id, Unit.index == 0))
    assert stored is None
    # Once commits work again, the same write lands and says so.
    r = client.put(url, json={"label": "stripes"}, headers=admin)
    assert r.status_code == 200 and r.json()["label"] == "stripes"


def _refuse(_session: Session) -> None:
    raise IntegrityError("COMMIT", {}, Exception("refused by the test"))
