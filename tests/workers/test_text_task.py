"""Text views end to end in-process on the default model: index, search, strings, labels."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select, update

from backend.catalog.service import add_model
from backend.datasets.service import add_dataset
from backend.db.models import Artifact, Dataset, Family, Job, Layer, Model, Unit
from backend.db.session import session_scope
from backend.precompute import queue_precompute
from backend.storage import make_store
from backend.textsearch import load_index
from tests.workers.test_mining_task import photos
from workers.tasks.catalog import register
from workers.tasks.datasets import import_folder
from workers.tasks.jobrun import Waiting, run_job
from workers.tasks.mining import mine, mine_shard
from workers.tasks.text import rendered_words, text_views

pytestmark = pytest.mark.slow


def assert_labels_scored(units: list[Unit]) -> None:
    """Every unit was scored: labelled exactly where its label cleared the measured bar (with
    that fidelity as its confidence), its best guesses kept either way."""
    for u in units:
        scores = u.label_scores
        assert scores and 0.0 < scores["threshold"] <= 1.0 and scores["guesses"]
        shown = scores["labels"]
        assert all(x["score"] >= scores["threshold"] for x in shown)
        if shown:
            assert u.label == ", ".join(x["text"] for x in shown) and u.label_source == "auto"
            assert 0.0 <= u.label_confidence <= 1.0
            assert u.label_confidence == shown[0]["score"]
        else:
            assert u.label is None and u.label_confidence is None


def test_text_views_make_units_searchable_by_words(settings, tmp_path, client) -> None:
    url = settings.database_url
    with session_scope(url) as s:
        ds, ds_job = add_dataset(s, str(photos(tmp_path)), "imgs")
        m, m_job = add_model(s, "default")
        s.info.clear()
        ids = ds.id, m.id, ds_job.id, m_job.id
    ds_id, mid, ds_job_id, m_job_id = ids
    assert run_job(ds_job_id, import_folder) == "succeeded"
    assert run_job(m_job_id, register) == "succeeded"
    with session_scope(url) as s:
        s.execute(
            update(Layer)
            .where(Layer.model_id == mid, Layer.name != "blocks.0")
            .values(is_default=False)
        )
        jobs = queue_precompute(s, s.get(Model, mid), s.get(Dataset, ds_id), featvis_units=0)
        s.info.clear()
        mine_id = next(j.id for j in jobs if j.kind == "mine_examples")
        text_id = next(j.id for j in jobs if j.kind == "text_views")
    with pytest.raises(Waiting):  # needs the dataset examples first
        run_job(text_id, text_views)
    with pytest.raises(Waiting):
        run_job(mine_id, mine)
    with session_scope(url) as s:
        shard_ids = s.scalars(select(Job.id).where(Job.kind == "mine_shard")).all()
    for j in shard_ids:
        run_job(j, mine_shard)
    assert run_job(mine_id, mine) == "succeeded"
    assert run_job(text_id, text_views) == "succeeded"

    store = make_store(settings)
    with session_scope(url) as s:
        key = s.scalar(select(Artifact.storage_key).where(Artifact.kind == "search_index"))
        layer = s.scalar(select(Layer).where(Layer.model_id == mid, Layer.name == "blocks.0"))
        fv = s.scalars(select(Artifact).where(Artifact.kind == "text_fv")).all()
        units = s.scalars(select(Unit).where(Unit.layer_id == layer.id)).all()
        fams = s.scalars(select(Family).where(Family.source == "auto")).all()
        assert len(fv) == layer.unit_count == 16
        strings = json.loads(store.get(fv[0].storage_key))["top"]
        assert len(strings) == 16
        assert [x["score"] for x in strings] == sorted((x["score"] for x in strings), reverse=True)
        assert_labels_scored(units)
        assert fams and all(f.members for f in fams)
    index = load_index(store, key)
    hits, used = index.search("espresso")
    assert used == ["espresso"] and len(hits) == 16
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)

    cards = client.get("/api/v1/search", params={"q": "espresso", "mode": "text"}).json()
    assert [c["unit"] for c in cards] == [h.unit for h in hits]
    assert cards[0]["score"] == pytest.approx(hits[0].score, abs=1e-3)
    page = client.get(
        f"/models/efficientnet-lite0/blocks.0/{hits[0].unit}?view=text",
        headers={"Accept": "text/html"},
    ).text
    top_unit = json.loads(
        store.get(next(a.storage_key for a in fv if a.unit_index == hits[0].unit))
    )
    first = top_unit["top"][0]["text"]
    assert f'<span class="s">{first}</span>' in page


def test_rendered_words_rank_words_per_unit(settings, client) -> None:
    url = settings.database_url
    with session_scope(url) as s:
        m, m_job = add_model(s, "default")
        s.info.clear()
        mid, m_job_id = m.id, m_job.id
    assert run_job(m_job_id, register) == "succeeded"
    with session_scope(url) as s:
        s.execute(
            update(Layer)
            .where(Layer.model_id == mid, Layer.name != "blocks.1")
            .values(is_default=False)
        )
        job = Job(
            kind="rendered_words",
            dedupe_key="rw-test",
            params={"model_id": mid, "words": 40},
            queue="gpu",
            model_id=mid,
        )
        s.add(job)
        s.flush()
        job_id = job.id
    assert run_job(job_id, rendered_words) == "succeeded"
    store = make_store(settings)
    with session_scope(url) as s:
        arts = s.scalars(select(Artifact).where(Artifact.kind == "rendered_words")).all()
        assert len(arts) == 24  # blocks.1 has 24 units
        tops = json.loads(store.get(arts[0].storage_key))["top"]
    assert len(tops) == 16
    assert [t["score"] for t in tops] == sorted((t["score"] for t in tops), reverse=True)
    assert tops[0]["score"] > 0  # above the unit's mean over all words
    page = client.get(
        f"/models/efficientnet-lite0/blocks.1/{arts[0].unit_index}?view=text",
        headers={"Accept": "text/html"},
    ).text
    assert "Rendered words" in page and f'<span class="s">{tops[0]["text"]}</span>' in page
