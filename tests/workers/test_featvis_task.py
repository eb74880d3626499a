"""Feature-visualization jobs in-process: real database, store and model; few steps."""

from __future__ import annotations

import io

import pytest
from PIL import Image
from sqlalchemy import select

from backend.db.models import Artifact, Dataset, Job, Layer, Model
from backend.db.session import session_scope
from backend.precompute import queue_precompute, request_featvis
from backend.storage import make_store
from workers.tasks.catalog import register
from workers.tasks.featvis import bulk, render
from workers.tasks.jobrun import Waiting, run_job


@pytest.fixture
def model_id(tiny_model_job):  # type: ignore[no-untyped-def]
    return tiny_model_job


def test_bulk_waits_for_registration_then_queues_blocks(settings, model_id, tmp_path) -> None:
    mid, reg_job = model_id
    url = settings.database_url
    with session_scope(url) as s:
        ds = Dataset(slug="d", source=str(tmp_path), state="ready", image_count=1)
        s.add(ds)
        s.flush()
        jobs = queue_precompute(s, s.get(Model, mid), ds, featvis_units=40)
        s.info.clear()
        bulk_id = next(j.id for j in jobs if j.kind == "featvis_bulk")
        after = next(j.params["after"] for j in jobs if j.kind == "featvis_bulk")
        assert sorted(s.get(Job, i).kind for i in after) == ["rendered_words", "text_views"]
    with pytest.raises(Waiting, match="register"):
        run_job(bulk_id, bulk)
    assert run_job(reg_job, register) == "succeeded"
    # On a CPU (as here) the renders wait for the quicker text views, done or failed.
    for i, state in zip(after, ("succeeded", "running"), strict=True):
        with session_scope(url) as s:
            s.get(Job, i).state = state
        with pytest.raises(Waiting, match="quicker views"):
            run_job(bulk_id, bulk)
    with session_scope(url) as s:
        s.get(Job, after[1]).state = "failed"
    assert run_job(bulk_id, bulk) == "succeeded"
    with session_scope(url) as s:
        blocks = s.scalars(select(Job).where(Job.kind == "featvis")).all()
        layers = s.scalars(select(Layer).where(Layer.model_id == mid, Layer.is_default)).all()
        expected = sum((min(40, x.unit_count) + 31) // 32 for x in layers)
        assert len(blocks) == expected
        assert all(b.params["steps"] == 6 for b in blocks)
        assert {tuple(b.params["units"]) for b in blocks} >= {(0, 32), (32, 40)}


def test_a_requested_render_is_published_with_its_activation(settings, model_id) -> None:
    mid, reg_job = model_id
    url = settings.database_url
    assert run_job(reg_job, register) == "succeeded"
    with session_scope(url) as s:
        layer = s.scalar(select(Layer).where(Layer.model_id == mid, Layer.name == "blocks.1"))
        job = request_featvis(s, s.get(Model, mid), layer, 3, "diversity")
        s.info.clear()
        job_id, layer_id = job.id, layer.id
        assert job.queue == "interactive"
    assert run_job(job_id, render) == "succeeded"
    store = make_store(settings)
    with session_scope(url) as s:
        arts = s.scalars(
            select(Artifact).where(Artifact.layer_id == layer_id, Artifact.kind == "featvis")
        ).all()
        assert sorted(a.variant for a in arts) == [f"diversity-{k}" for k in range(4)]
        assert all(a.unit_index == 3 for a in arts)
        for a in arts:
            img = Image.open(io.BytesIO(store.get(a.storage_key)))
            assert img.format == "WEBP" and img.size[0] >= 64
            assert isinstance(a.meta["act_max"], float)
            assert a.provenance["params"]["objective"] == "diversity"
    assert run_job(job_id, render) == "succeeded"  # re-delivered: nothing redone
    with session_scope(url) as s:
        assert len(s.scalars(select(Artifact).where(Artifact.kind == "featvis")).all()) == 4


def test_channel_render_refreshes_the_neuron_card(settings, model_id, client) -> None:
    mid, reg_job = model_id
    url = settings.database_url
    assert run_job(reg_job, register) == "succeeded"
    with session_scope(url) as s:
        layer = s.scalar(select(Layer).where(Layer.model_id == mid, Layer.name == "blocks.1"))
        job = request_featvis(s, s.get(Model, mid), layer, 2, "channel")
        s.info.clear()
        job_id = job.id
    assert run_job(job_id, render) == "succeeded"
    with session_scope(url) as s:
        card = s.scalar(select(Artifact).where(Artifact.kind == "neuron_card"))
        assert card is not None and card.unit_index == 2 and card.content_type == "image/jpeg"
        key = card.storage_key
    img = Image.open(io.BytesIO(make_store(settings).get(key)))
    assert img.format == "JPEG" and img.size == (1200, 630)
    page = client.get(
        "/models/test-efficientnet-random/blocks.1/2", headers={"Accept": "text/html"}
    ).text
    assert f'<meta property="og:image" content="http://127.0.0.1:8000/objects/{key}">' in page
