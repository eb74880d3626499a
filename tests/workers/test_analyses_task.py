"""Conditional probability and typographic jobs in-process: real database, store, model."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select, update

from backend.analyses.service import request_condprob, request_typographic
from backend.catalog.service import add_model
from backend.datasets.service import add_dataset
from backend.db.models import Artifact, Dataset, Layer, Model
from backend.db.session import session_scope
from backend.storage import make_store
from tests.workers.test_mining_task import photos
from workers.tasks.catalog import register
from workers.tasks.condprob import condprob_plots
from workers.tasks.datasets import import_folder
from workers.tasks.jobrun import Waiting, run_job
from workers.tasks.typographic import typographic

pytestmark = pytest.mark.slow  # the pretrained default model and its text head


def test_condprob_and_typographic_jobs_publish_what_pages_show(settings, tmp_path, client) -> None:
    url = settings.database_url
    with session_scope(url) as s:
        ds, ds_job = add_dataset(s, str(photos(tmp_path)), "imgs")
        m, reg = add_model(s, "default")
        s.info.clear()
        ds_id, ds_job_id, mid, reg_job = ds.id, ds_job.id, m.id, reg.id
    with session_scope(url) as s:
        m, d = s.get(Model, mid), s.get(Dataset, ds_id)
        cp = request_condprob(s, m, d, concepts=["dog", "car", "text"]).id
        ty = request_typographic(s, m, d, words=["iPod", "pizza"], photos=6).id
    with pytest.raises(Waiting):  # the model registers first
        run_job(cp, condprob_plots)
    assert run_job(reg_job, register) == "succeeded"
    assert run_job(ds_job_id, import_folder) == "succeeded"
    with session_scope(url) as s:  # two layers keep it quick: an early one and the last
        s.execute(
            update(Layer)
            .where(Layer.model_id == mid, Layer.name.not_in(["blocks.1", "conv_head"]))
            .values(is_default=False)
        )
    assert run_job(cp, condprob_plots) == "succeeded"
    assert run_job(ty, typographic) == "succeeded"

    store = make_store(settings)
    with session_scope(url) as s:
        layers = s.scalars(select(Layer).where(Layer.model_id == mid, Layer.is_default)).all()
        plots = s.scalars(select(Artifact).where(Artifact.kind == "condprob")).all()
        assert len(plots) == sum(x.unit_count for x in layers)
        plot = json.loads(store.get(plots[0].storage_key))
        attack = {
            a.variant: json.loads(store.get(a.storage_key))
            for a in s.scalars(select(Artifact).where(Artifact.kind == "typographic"))
        }
        first = layers[0]
        slug = s.get(Model, mid).slug
    assert plot["concepts"] == ["dog", "car", "text"]
    for row, n in zip(plot["shares"], plot["sampled"], strict=True):
        assert sum(row) == pytest.approx(1.0 if n else 0.0, abs=1e-5)
    assert sum(plot["totals"]) == 14  # every image of the dataset falls in a bucket
    summary = attack["summary"]
    assert summary["words"] == ["iPod", "pizza"] and summary["photos"] == 6
    assert [w["word"] for w in summary["per_word"]] == ["iPod", "pizza"]
    assert all(0 <= w["flipped"] <= w["eligible"] <= 6 for w in summary["per_word"])
    units = attack["units"]  # the last layer published; every unit has its responses
    assert len(units["with_word"]) == 2 and len(units["photo"]) == len(units["with_word"][0])

    api = client.get(f"/api/v1/models/{slug}/layers/{first.name}/units/0/condprob").json()
    assert api["concepts"] == ["dog", "car", "text"]
    assert client.get(f"/api/v1/models/{slug}/typographic").json()["words"] == ["iPod", "pizza"]
