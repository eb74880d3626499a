"""A text concept as a sparse non-negative combination of units: the fit, the API, the page."""

from __future__ import annotations

import numpy as np
import pytest
from bs4 import BeautifulSoup

from backend.storage import make_store
from backend.textsearch import TextIndex
from tests.factories import (
    make_artifact,
    make_layer,
    make_model,
    make_search_index,
    unit_vectors,
)


def text_index(vecs: np.ndarray, vocab: dict[str, np.ndarray], split: int) -> TextIndex:
    """An index over two layers, "a" (units [0, split)) and "b" (the rest)."""
    words = list(vocab)
    return TextIndex(
        {
            "layer_names": np.array(["a", "b"]),
            "unit_layer": (np.arange(len(vecs)) >= split).astype(np.int32),
            "unit_index": np.concatenate([np.arange(split), np.arange(len(vecs) - split)]),
            "unit_vecs": vecs,
            "vocab": np.array(words),
            "vocab_vecs": np.stack([v / np.linalg.norm(v) for v in vocab.values()]),
        }
    )


def test_an_exact_combination_of_two_units_is_recovered() -> None:
    vecs = unit_vectors(60, dim=32, seed=1)  # (U, D)
    mix = 0.7 * vecs[5] + 0.4 * vecs[40]  # unit 5 of "a", unit 10 of "b"
    index = text_index(vecs, {"mix": mix, "other": vecs[7] + vecs[8]}, split=30)

    comp = index.compose("mix")
    assert comp is not None and comp.used == ["mix"]
    assert [(t.layer, t.unit) for t in comp.terms] == [("a", 5), ("b", 10)]
    scale = float(np.linalg.norm(mix))  # the query vector is normalised
    assert [t.weight for t in comp.terms] == pytest.approx([0.7 / scale, 0.4 / scale], rel=1e-3)
    assert comp.cosine == pytest.approx(1.0, abs=1e-4)

    within = index.compose("mix", layer="a")
    assert within is not None and {t.layer for t in within.terms} == {"a"}
    assert within.terms[0].unit == 5 and within.cosine < comp.cosine
    assert index.compose("mix", layer="nope") is None
    assert index.compose("unheard of") is None


@pytest.mark.parametrize("seed", range(5))
def test_compositions_are_sparse_and_non_negative(seed: int) -> None:
    # 400 units in 64 dimensions that share a common direction, as real text vectors do.
    rng = np.random.default_rng(seed)
    common = rng.normal(size=64)
    vecs = rng.normal(size=(400, 64)) + 0.8 * common
    vecs = (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)).astype(np.float32)
    query = rng.normal(size=64) + 0.8 * common
    index = text_index(vecs, {"q": query}, split=200)

    comp = index.compose("q")
    assert comp is not None
    assert 1 <= len(comp.terms) <= 8
    assert all(t.weight > 0 for t in comp.terms)
    assert [t.weight for t in comp.terms] == sorted((t.weight for t in comp.terms), reverse=True)
    assert len({(t.layer, t.unit) for t in comp.terms}) == len(comp.terms)
    best_single = float((vecs @ (query / np.linalg.norm(query))).max())
    assert best_single - 1e-4 <= comp.cosine <= 1.0
    fewer = index.compose("q", max_units=3)
    assert fewer is not None and 1 <= len(fewer.terms) <= 3


@pytest.fixture
def indexed(session, settings):  # type: ignore[no-untyped-def]
    """Model "tiny" with a search index over stem (4 units) and blocks.1 (6 units), where
    "mix" is 0.7 × blocks.1:4 + 0.4 × stem:1; model "bare" has none."""
    store = make_store(settings)
    m = make_model(session, "tiny")
    stem = make_layer(session, m, "stem", units=4, order=0)
    blocks = make_layer(session, m, "blocks.1", units=6, order=1)
    make_artifact(session, store, m, blocks, 4)  # a thumbnail for the first term
    vecs = unit_vectors(10, dim=32, seed=3)
    mix = 0.7 * vecs[4 + 4] + 0.4 * vecs[1]
    make_search_index(session, store, m, [stem, blocks], vecs, {"mix": mix, "dog": vecs[0]})
    make_layer(session, make_model(session, "bare"), "blocks.1", units=6)
    session.commit()
    return m


def test_compose_api(client, indexed) -> None:
    r = client.get("/api/v1/search/compose", params={"q": "mix", "model": "tiny"})
    assert r.status_code == 200
    body = r.json()
    assert body["model"] == "tiny" and body["used"] == ["mix"] and body["cosine"] > 0.999
    terms = body["terms"]
    assert [(t["layer"], t["unit"]) for t in terms] == [("blocks.1", 4), ("stem", 1)]
    assert terms[0]["weight"] > terms[1]["weight"] > 0
    assert terms[0]["url"] == "/models/tiny/blocks.1/4" and terms[0]["thumbnail"]
    assert terms[1]["thumbnail"] is None

    anywhere = client.get("/api/v1/search/compose", params={"q": "mix"}).json()
    assert anywhere["terms"] == terms  # the only model with an index
    one = client.get(
        "/api/v1/search/compose", params={"q": "mix", "model": "tiny", "layer": "stem"}
    ).json()
    assert one["layer"] == "stem" and one["terms"][0]["unit"] == 1
    assert {t["layer"] for t in one["terms"]} == {"stem"}
    unknown = client.get("/api/v1/search/compose", params={"q": "qwerty", "model": "tiny"})
    assert unknown.status_code == 200 and unknown.json()["terms"] == []


@pytest.mark.parametrize(
    ("params", "status", "says"),
    [
        ({"q": "mix", "model": "nope"}, 404, "unknown model 'nope'"),
        ({"q": "mix", "model": "tiny", "layer": "nope"}, 404, "unknown layer 'nope'"),
        ({"q": "mix", "model": "bare"}, 409, "model 'bare' has no search index"),
        ({"q": "mix", "layer": "nope"}, 409, "no model has a search index covering layer"),
        ({"q": ""}, 422, "q"),
        ({"q": "   "}, 422, "the query is empty"),
        ({}, 422, "q"),
    ],
)
def test_compose_api_errors(client, indexed, params, status, says) -> None:
    r = client.get("/api/v1/search/compose", params=params)
    assert r.status_code == status
    assert r.headers["content-type"].startswith("application/json")
    assert says in r.json()["detail"]


def test_search_page_shows_the_composition_card(client, indexed) -> None:
    api = client.get("/api/v1/search/compose", params={"q": "mix"}).json()
    page = BeautifulSoup(
        client.get("/search", params={"q": "mix"}, headers={"Accept": "text/html"}).text,
        "html.parser",
    )
    card = page.select_one("section.composition")
    assert card is not None
    assert "“mix” as a combination of units" in card.h2.text
    formula = " ".join(card.select_one(".formula").text.split())
    w0, w1 = (f"{t['weight']:.2f}" for t in api["terms"])
    assert formula == f"mix ≈ {w0} × blocks.1:4 + {w1} × stem:1"
    assert [a["href"] for a in card.select("a.term")] == [t["url"] for t in api["terms"]]
    assert card.select("a.term img")[0]["src"] == api["terms"][0]["thumbnail"]
    assert "cosine 1.00" in card.select_one(".meta").text

    # No index for the model: the page still answers, without a composition.
    bare = client.get(
        "/search", params={"q": "mix", "model": "bare"}, headers={"Accept": "text/html"}
    )
    assert bare.status_code == 200 and "composition" not in bare.text
