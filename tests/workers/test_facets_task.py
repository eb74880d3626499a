"""Faceted feature visualization end to end: datasets, the probe job, a steered render, API."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select

from backend.datasets.service import add_dataset
from backend.db.models import Artifact, Dataset, Job, Layer, Model
from backend.db.session import session_scope
from backend.errors import InvalidInput
from backend.precompute import request_facet, request_featvis
from backend.storage import make_store
from tests.conftest import ADMIN_TOKEN
from workers.tasks.catalog import register
from workers.tasks.datasets import import_folder
from workers.tasks.facets import load_probe, train
from workers.tasks.featvis import render
from workers.tasks.jobrun import run_job

SLUG = "test-efficientnet-random"


def write_images(folder: Path, kind: str, n: int = 8, size: int = 48) -> None:
    """Red images with dark vertical stripes (the facet), or coloured noise (generic)."""
    folder.mkdir()
    rng = np.random.default_rng(0 if kind == "facet" else 1)
    for i in range(n):
        if kind == "facet":
            px = np.zeros((size, size, 3), np.uint8)
            px[..., 0] = rng.integers(180, 256)
            px[..., 1:] = rng.integers(0, 60, size=2)
            px[:, (i % 3) :: 6] //= 4  # stripes, phase varying per image
        else:
            px = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
            px[..., 0] //= 3  # never red-dominated
        Image.fromarray(px).save(folder / f"{kind}-{i}.png")


@pytest.fixture
def ready_model(tiny_model_job):  # type: ignore[no-untyped-def]
    """The tiny timm model, registered; renders take a few steps."""
    mid, reg = tiny_model_job
    assert run_job(reg, register) == "succeeded"
    return mid


@pytest.fixture
def datasets(settings, tmp_path):  # type: ignore[no-untyped-def]
    """Two imported datasets: ``stripes`` (the facet) and ``noise`` (generic)."""
    jobs = []
    with session_scope(settings.database_url) as s:
        for slug, kind in (("stripes", "facet"), ("noise", "generic")):
            write_images(tmp_path / slug, kind)
            jobs.append(add_dataset(s, str(tmp_path / slug), slug)[1].id)
        s.info.clear()
    for j in jobs:
        assert run_job(j, import_folder) == "succeeded"


def _pixels(settings, key: str) -> np.ndarray:  # type: ignore[no-untyped-def]
    return np.asarray(Image.open(io.BytesIO(make_store(settings).get(key))).convert("RGB"))


def test_a_trained_facet_is_stored_listed_and_steers_a_render(
    settings, ready_model, datasets, client
) -> None:
    url = settings.database_url
    with session_scope(url) as s:
        model = s.get(Model, ready_model)
        facet, generic = (
            s.scalar(select(Dataset).where(Dataset.slug == x)) for x in ("stripes", "noise")
        )
        job = request_facet(s, model, "Red Stripes!", facet, generic)
        s.info.clear()
        train_id, layer_id = job.id, job.params["layer_id"]
        assert job.params["name"] == "red-stripes"
    assert run_job(train_id, train) == "succeeded"
    with session_scope(url) as s:
        probe_art = s.scalar(select(Artifact).where(Artifact.kind == "facet_probe"))
        assert probe_art is not None
        assert probe_art.layer_id is None and probe_art.unit_index is None
        layer = s.get(Layer, layer_id)
        assert probe_art.meta["accuracy"] >= 0.9
        assert probe_art.meta | {"accuracy": 0} == {
            "name": "red-stripes",
            "layer": layer.name,
            "accuracy": 0,
            "n_facet": 8,
            "n_generic": 8,
        }
        probe = load_probe(make_store(settings), probe_art)
        assert probe.layer == layer.module_path and probe.weights.shape == (layer.unit_count,)
        assert probe.accuracy == probe_art.meta["accuracy"]

    listed = client.get(f"/api/v1/models/{SLUG}/facets").json()
    assert [(f["name"], f["layer"]) for f in listed] == [("red-stripes", layer.name)]

    with session_scope(url) as s:
        model = s.get(Model, ready_model)
        target = s.scalar(select(Layer).where(Layer.model_id == model.id, Layer.name == "blocks.4"))
        lower = s.scalar(select(Layer).where(Layer.model_id == model.id, Layer.name == "blocks.1"))
        # The probe reads the middle default layer, which is above blocks.1.
        above = rf"reads layer {re.escape(layer.name)}, which is not below"
        with pytest.raises(InvalidInput, match=above):
            request_featvis(s, model, lower, 2, "channel", "red-stripes")
        plain = request_featvis(s, model, target, 2, "channel").id
        steered = request_featvis(s, model, target, 2, "channel", "red-stripes")
        s.info.clear()
        assert steered.params["facet"] == "red-stripes" and steered.id != plain
        steered_id, target_id = steered.id, target.id
    assert run_job(plain, render) == "succeeded"
    assert run_job(steered_id, render) == "succeeded"
    with session_scope(url) as s:
        arts = {
            a.variant: a
            for a in s.scalars(
                select(Artifact).where(Artifact.layer_id == target_id, Artifact.kind == "featvis")
            )
        }
        assert set(arts) == {"channel", "facet-red-stripes"}
        facet_art = arts["facet-red-stripes"]
        assert facet_art.provenance["params"]["facet"]["layer"] == probe.layer
        a, b = (
            _pixels(settings, arts["channel"].storage_key),
            _pixels(settings, facet_art.storage_key),
        )
        assert a.shape == b.shape and np.abs(a.astype(int) - b.astype(int)).mean() > 1.0

    # The admin's unit page offers the facet and captions its render.
    client.post("/admin/login", data={"token": ADMIN_TOKEN}, follow_redirects=False)
    page = client.get(f"/models/{SLUG}/blocks.4/2?view=featvis", headers={"Accept": "text/html"})
    assert (
        '<select name="facet"><option value="">none</option><option>red-stripes</option>'
        in page.text
    )
    assert "facet &ldquo;red-stripes&rdquo;" in page.text


def test_a_render_whose_facet_is_gone_fails_readably(settings, ready_model, datasets) -> None:
    url = settings.database_url
    with session_scope(url) as s:
        model = s.get(Model, ready_model)
        facet, generic = (
            s.scalar(select(Dataset).where(Dataset.slug == x)) for x in ("stripes", "noise")
        )
        # A layer below blocks.1 (layer discovery names the first block's conv, not blocks.0).
        train_id = request_facet(s, model, "stripes", facet, generic, "conv_stem").id
        s.info.clear()
    assert run_job(train_id, train) == "succeeded"
    with session_scope(url) as s:
        model = s.get(Model, ready_model)
        target = s.scalar(select(Layer).where(Layer.model_id == model.id, Layer.name == "blocks.1"))
        job_id = request_featvis(s, model, target, 0, "channel", "stripes").id
        for a in s.scalars(select(Artifact).where(Artifact.kind == "facet_probe")):
            s.delete(a)
        s.info.clear()
    with pytest.raises(ValueError, match="no trained facet 'stripes'"):
        run_job(job_id, render)
    with session_scope(url) as s:
        job = s.get(Job, job_id)
        assert job.state == "failed" and "has no trained facet 'stripes'" in job.error


def test_the_facet_api_checks_token_names_datasets_and_layers(
    settings, ready_model, datasets, client, admin
) -> None:
    api = f"/api/v1/models/{SLUG}"
    body = {"name": "Stripes", "dataset": "stripes", "generic": "noise"}
    assert client.post(f"{api}/facets", json=body).status_code == 401
    r = client.post(f"{api}/facets", json={**body, "generic": "nope"}, headers=admin)
    assert r.status_code == 404 and r.json()["detail"] == "unknown dataset 'nope'"
    r = client.post(f"{api}/facets", json={**body, "layer": "nope"}, headers=admin)
    assert r.status_code == 404 and r.json()["detail"] == "unknown layer 'nope'"
    r = client.post(f"{api}/facets", json={**body, "generic": "stripes"}, headers=admin)
    assert r.status_code == 422 and "must differ" in r.json()["detail"]
    r = client.post(f"{api}/facets", json=body, headers=admin)
    assert r.status_code == 202 and r.json()["kind"] == "train_facet"
    again = client.post(f"{api}/facets", json=body, headers=admin).json()
    assert again["id"] == r.json()["id"]  # the same request is the same job
    assert client.get(f"{api}/facets").json() == []  # nothing trained yet

    render_url = f"{api}/layers/blocks.1/units/0/featvis"
    r = client.post(f"{render_url}?facet=nope", headers=admin)
    assert r.status_code == 404 and r.json() == {
        "error": "not_found",
        "detail": "unknown facet 'nope'",
        "status": 404,
    }
    assert client.post(f"{render_url}?facet=nope").status_code == 401


def test_the_model_page_trains_a_facet_and_lists_it(settings, ready_model, datasets, client):  # type: ignore[no-untyped-def]
    html = {"Accept": "text/html"}
    page = client.get(f"/models/{SLUG}", headers=html)
    assert "No facets trained for this model yet." in page.text
    assert 'class="facet-form"' not in page.text  # visitors get no form...
    r = client.post(f"/models/{SLUG}/facets", data={"name": "x", "dataset": "stripes"})
    assert r.status_code == 401  # ...and cannot post one

    client.post("/admin/login", data={"token": ADMIN_TOKEN}, follow_redirects=False)
    form = {"name": "Red stripes", "dataset": "stripes", "generic": "stripes", "layer": ""}
    bad = client.post(f"/models/{SLUG}/facets", data=form, headers=html)
    assert bad.status_code == 422
    assert "the facet and generic datasets must differ" in bad.text
    assert 'value="Red stripes"' in bad.text  # what was typed is kept
    form |= {"generic": "noise", "layer": "blocks.1"}
    r = client.post(f"/models/{SLUG}/facets", data=form, follow_redirects=False)
    assert r.status_code == 303
    job_id = int(r.headers["location"].split("job=")[1].split("#")[0])
    followed = client.get(r.headers["location"], headers=html)
    assert 'class="job-live"' in followed.text and "train facet" in followed.text

    assert run_job(job_id, train) == "succeeded"
    client.cookies.clear()
    listed = client.get(f"/models/{SLUG}", headers=html).text
    assert "<td>red-stripes</td>" in listed and "<code>blocks.1</code>" in listed
