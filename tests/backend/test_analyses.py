"""Conditional probability plots and typographic attacks: API, unit and model pages, jobs."""

from __future__ import annotations

import numpy as np
from bs4 import BeautifulSoup
from sqlalchemy import select

from backend.db.models import Dataset, Job
from backend.storage import make_store
from contracts.jobs import JobState
from tests.factories import make_layer, make_model
from workers.ml.text.condprob import condprob
from workers.tasks.artifacts import publish_json

HTML = {"Accept": "text/html"}
CONCEPTS = ["dog", "car", "sky"]


def seeded(session, settings):  # type: ignore[no-untyped-def]
    """A model whose layer has a plot for unit 1 and an attack over two words."""
    m = make_model(session, "tiny")
    m.class_names = ["apple", "iPod", "pizza"]
    layer = make_layer(session, m, "blocks.1", units=3)
    store = make_store(settings)
    rng = np.random.default_rng(0)
    cats = rng.integers(0, 3, 200)
    plot = condprob(rng.normal(size=200) + cats, cats, CONCEPTS, np.arange(200), buckets=5,
                    per_bucket=10)  # fmt: skip
    publish_json(session, store, plot, model=m, layer=layer, unit=1, kind="condprob",
                 variant="concepts-a", params={"concepts": CONCEPTS})  # fmt: skip
    summary = {
        "words": ["iPod", "pizza"],
        "photos": 40,
        "classes": 3,
        "flipped": 30,
        "eligible": 60,
        "success_rate": 0.5,
        "per_word": [
            {"word": "iPod", "flipped": 25, "eligible": 30, "rate": 25 / 30,
             "units": [{"layer": "blocks.1", "unit": 2, "rise": 4.5}]},
            {"word": "pizza", "flipped": 5, "eligible": 30, "rate": 5 / 30, "units": []},
        ],
    }  # fmt: skip
    publish_json(session, store, summary, model=m, layer=None, unit=None, kind="typographic",
                 variant="summary", params={"words": 2})  # fmt: skip
    units = {
        "words": ["iPod", "pizza"],
        "photo": [0.1, 0.2, 0.3],
        "with_word": [[0.1, 0.2, 2.3], [0.1, 0.2, 0.4]],
        "word_alone": [[0.0, 0.1, 3.1], [0.0, 0.1, 0.5]],
        "rise": [[0.0, 0.0, 4.5], [0.0, 0.0, 0.2]],
    }
    publish_json(session, store, units, model=m, layer=layer, unit=None, kind="typographic",
                 variant="units", params={"words": 2})  # fmt: skip
    session.commit()
    return plot


def test_condprob_api_and_tab(client, session, settings) -> None:
    plot = seeded(session, settings)
    got = client.get("/api/v1/models/tiny/layers/blocks.1/units/1/condprob").json()
    assert got["concepts"] == CONCEPTS and got["shares"] == plot["shares"]
    assert all(abs(sum(row) - 1) < 1e-5 for row, n in zip(got["shares"], got["sampled"],
                                                          strict=True) if n)  # fmt: skip
    missing = client.get("/api/v1/models/tiny/layers/blocks.1/units/0/condprob")
    assert missing.status_code == 404

    page = BeautifulSoup(
        client.get("/models/tiny/blocks.1/1?view=condprob", headers=HTML).text, "html.parser"
    )
    tabs = [a.text.strip() for a in page.select("nav.tabs a")]
    assert "Conditional probability" in tabs
    bars = page.select("figure.condprob g.bucket")
    assert len(bars) == 5
    heights = [sum(float(r["height"]) for r in g.select("rect:not(.empty)")) for g in bars]
    for h, n in zip(heights, plot["sampled"], strict=True):
        assert abs(h - (160.0 if n else 0.0)) < 0.1  # every sampled bar is full: shares sum to 1
    assert [x.text for x in page.select("figure.condprob .axis")][0].endswith("σ")
    assert {li.text for li in page.select("ul.legend li")} <= set(CONCEPTS)
    # A classifier has a text head: the tab is offered on a unit without a plot yet.
    empty = BeautifulSoup(
        client.get("/models/tiny/blocks.1/0?view=condprob", headers=HTML).text, "html.parser"
    )
    assert "No conditional probability plot" in empty.select_one("p.empty").text


def test_typographic_model_page_unit_page_and_api(client, session, settings) -> None:
    seeded(session, settings)
    assert client.get("/api/v1/models/tiny/typographic").json()["success_rate"] == 0.5
    page = BeautifulSoup(client.get("/models/tiny", headers=HTML).text, "html.parser")
    section = page.select_one("#typographic")
    assert "50%" in section.p.text
    rows = section.select("tbody tr")
    assert [r.td.text for r in rows] == ["iPod", "pizza"]
    link = rows[0].select_one("a")
    assert link["href"] == "/models/tiny/blocks.1/2?view=text" and link.text == "blocks.1:2"

    unit = BeautifulSoup(
        client.get("/models/tiny/blocks.1/2?view=text", headers=HTML).text, "html.parser"
    )
    cells = [[td.text for td in tr.select("td")] for tr in unit.select(".attack tbody tr")]
    assert cells[0] == ["iPod", "2.30", "3.10", "+4.50σ"]


def test_jobs_are_queued_by_an_admin(client, session, settings, admin) -> None:
    seeded(session, settings)
    assert client.post("/api/v1/models/tiny/condprob", json={}).status_code == 401
    r = client.post("/api/v1/models/tiny/condprob", json={}, headers=admin)
    assert r.status_code == 409  # no mined dataset to plot over yet
    ds = Dataset(slug="photos", source="/tmp", state="ready", image_count=3)
    session.add(ds)
    session.commit()
    r = client.post(
        "/api/v1/models/tiny/condprob",
        json={"concepts": ["text", "face"], "layers": ["blocks.1"], "dataset": "photos"},
        headers=admin,
    )
    assert r.status_code == 202
    job = session.scalar(select(Job).where(Job.kind == "condprob"))
    assert job.params["concepts"] == ["text", "face"] and job.params["layers"] == ["blocks.1"]
    bad = client.post(
        "/api/v1/models/tiny/condprob",
        json={"concepts": ["text"], "dataset": "photos"},
        headers=admin,
    )
    assert bad.status_code == 422
    r = client.post(
        "/api/v1/models/tiny/typographic",
        json={"words": ["pear"], "dataset": "photos"},
        headers=admin,
    )
    assert r.status_code == 422 and "pear" in r.json()["detail"]
    r = client.post(
        "/api/v1/models/tiny/typographic", json={"words": ["iPod"], "dataset": "photos"},
        headers=admin,
    )  # fmt: skip
    assert r.status_code == 202 and r.json()["state"] == JobState.QUEUED
