"""Integers in paths and queries beyond what the database stores: 404 or 422, never 500."""

from __future__ import annotations

import pytest

from tests.factories import make_layer, make_model

HUGE = "99999999999999999999"


@pytest.fixture
def tiny(session) -> None:
    m = make_model(session, "tiny")
    make_layer(session, m, "blocks.1", units=4)
    session.commit()


@pytest.mark.usefixtures("tiny")
@pytest.mark.parametrize(
    "url",
    [
        f"/models/tiny/blocks.1/{HUGE}",
        f"/models/tiny/blocks.1/{2**31}",
        f"/api/v1/models/tiny/layers/blocks.1/units/{HUGE}",
        f"/api/v1/jobs/{HUGE}",
        f"/api/v1/jobs/{2**63}",
        f"/partials/job/{HUGE}",
    ],
)
def test_huge_path_integers_are_404(client, url: str) -> None:
    r = client.get(url)
    assert r.status_code == 404, r.text
    assert r.json()["error"] == "not_found"


@pytest.mark.usefixtures("tiny")
@pytest.mark.parametrize(
    "url",
    [
        f"/models/tiny/blocks.1?offset={HUGE}",
        f"/api/v1/models/tiny/layers/blocks.1/units?offset={HUGE}",
        f"/api/v1/jobs?offset={HUGE}",
        f"/models/tiny?job={HUGE}",
        f"/models/tiny/blocks.1/0?job={HUGE}",
    ],
)
def test_huge_query_integers_are_422(client, url: str) -> None:
    r = client.get(url)
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "invalid_input"


@pytest.mark.usefixtures("tiny")
def test_huge_integers_in_writes_are_404(client, admin) -> None:
    r = client.post(f"/api/v1/jobs/{HUGE}/retry", headers=admin)
    assert r.status_code == 404
    r = client.post(
        f"/api/v1/models/tiny/layers/blocks.1/units/{HUGE}/featvis", headers=admin
    )
    assert r.status_code == 404
    r = client.put(
        f"/api/v1/models/tiny/layers/blocks.1/units/{HUGE}/label",
        json={"label": "x"},
        headers=admin,
    )
    assert r.status_code == 404


@pytest.mark.usefixtures("tiny")
def test_the_largest_stored_offset_still_answers(client) -> None:
    r = client.get(f"/api/v1/models/tiny/layers/blocks.1/units?offset={2**31 - 1}")
    assert r.status_code == 200 and r.json()["items"] == []
