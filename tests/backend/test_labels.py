"""Every label is shown with its fidelity score; a unit that abstains shows its best guesses."""

from __future__ import annotations

from bs4 import BeautifulSoup
from sqlalchemy import select

from backend.db.models import Unit
from tests.factories import make_layer, make_model

HTML = {"Accept": "text/html"}
THRESHOLD = 0.21


def guess(text: str, score: float, kind: str = "colour") -> dict:
    return {"text": text, "kind": kind, "score": score, "selection": score + 0.01}


def labelled_units(session) -> list[Unit]:  # type: ignore[no-untyped-def]
    m = make_model(session, "tiny")
    layer = make_layer(session, m, "blocks.1", units=3)
    units = session.scalars(select(Unit).where(Unit.layer_id == layer.id).order_by(Unit.index))
    red, silent, poly = list(units)
    base = {"threshold": THRESHOLD, "heldout": 150}
    red.label, red.label_source, red.label_confidence = "red", "auto", 0.83
    red.label_scores = {**base, "labels": [guess("red", 0.83)], "guesses": [guess("red", 0.83)]}
    silent.label_scores = {
        **base,
        "labels": [],
        "guesses": [guess("tank", 0.12, "concept"), guess("stripes", 0.09, "texture")],
    }
    poly.label, poly.label_source, poly.label_confidence = "dog, blue", "auto", 0.5
    poly.label_scores = {
        **base,
        "labels": [guess("dog", 0.5, "concept"), guess("blue", 0.31)],
        "guesses": [guess("dog", 0.5, "concept"), guess("blue", 0.31)],
    }
    session.commit()
    return [red, silent, poly]


def test_unit_json_carries_scores_guesses_and_the_bar(client, session) -> None:
    labelled_units(session)
    red = client.get("/api/v1/models/tiny/layers/blocks.1/units/0").json()
    assert red["labels"] == [{"text": "red", "kind": "colour", "score": 0.83}]
    assert red["label_threshold"] == THRESHOLD
    silent = client.get("/api/v1/models/tiny/layers/blocks.1/units/1").json()
    assert silent["label"] is None and silent["labels"] == []
    assert [g["text"] for g in silent["label_guesses"]] == ["tank", "stripes"]
    poly = client.get("/api/v1/models/tiny/layers/blocks.1/units/2").json()
    assert [(x["text"], x["score"]) for x in poly["labels"]] == [("dog", 0.5), ("blue", 0.31)]


def test_pages_show_the_score_beside_every_label(client, session) -> None:
    labelled_units(session)
    page = BeautifulSoup(client.get("/models/tiny/blocks.1/2", headers=HTML).text, "html.parser")
    shown = page.select(".meta .labels .label")
    assert [x.text for x in shown] == ["dog", "blue"]
    assert [x.find_next_sibling("small").text for x in shown] == ["0.50", "0.31"]

    page = BeautifulSoup(client.get("/models/tiny/blocks.1/1", headers=HTML).text, "html.parser")
    assert page.select_one(".meta .unlabelled").text == "unlabelled"
    assert page.select(".meta .label") == []
    guesses = page.select_one("details.label-guesses")
    assert guesses.has_attr("open")  # the unit abstains: its best guesses are in view
    assert [g.text for g in guesses.select(".guess")] == ["tank", "stripes"]
    assert "0.21" in guesses.text and "0.12" in guesses.text

    grid = BeautifulSoup(client.get("/models/tiny/blocks.1", headers=HTML).text, "html.parser")
    cells = grid.select(".unit-cell .ulabel")
    assert [c.contents[0].strip() for c in cells] == ["red", "dog, blue"]
    assert [c.select_one(".fidelity").text for c in cells] == ["0.83", "0.50"]


def test_search_by_label_shows_scores_and_an_admin_label_is_unscored(
    client, session, admin
) -> None:
    labelled_units(session)
    cards = client.get("/api/v1/search", params={"q": "red", "mode": "label"}).json()
    assert [(c["label"], c["label_score"]) for c in cards] == [("red", 0.83)]
    page = BeautifulSoup(
        client.get("/search", params={"q": "blue", "mode": "label"}, headers=HTML).text,
        "html.parser",
    )
    card = page.select(".neuron-card")[-1]
    assert card.strong.text == "dog, blue" and card.select_one(".fidelity").text == "0.50"

    r = client.put(
        "/api/v1/models/tiny/layers/blocks.1/units/0/label", json={"label": "cherry"}, headers=admin
    )
    assert r.status_code == 200
    unit = client.get("/api/v1/models/tiny/layers/blocks.1/units/0").json()
    # The old score was red's: the admin's label waits for the next labels run.
    assert unit["labels"] == [{"text": "cherry", "kind": "admin", "score": None}]
    assert [g["text"] for g in unit["label_guesses"]] == ["red"]
    page = BeautifulSoup(client.get("/models/tiny/blocks.1/0", headers=HTML).text, "html.parser")
    assert page.select_one(".meta .fidelity").text == "not scored yet"
