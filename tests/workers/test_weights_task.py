"""Weight-view jobs in-process: real database, store and model (timm's test_efficientnet)."""

from __future__ import annotations

import io
import json

import pytest
from bs4 import BeautifulSoup
from PIL import Image
from sqlalchemy import select

from backend.catalog.service import add_model
from backend.db.models import Artifact, Dataset, Job, Layer, Model
from backend.db.session import session_scope
from backend.precompute import queue_precompute, request_weight_views
from backend.storage import make_store
from workers.tasks.catalog import register
from workers.tasks.jobrun import Waiting, run_job
from workers.tasks.weights import weight_views

HTML = {"Accept": "text/html"}
SLUG = "test-efficientnet-random"


def test_up_queues_weight_views_that_wait_for_the_model(settings, tiny_model_job, tmp_path) -> None:
    mid, reg_job = tiny_model_job
    with session_scope(settings.database_url) as s:
        ds = Dataset(slug="d", source=str(tmp_path), state="ready", image_count=1)
        s.add(ds)
        s.flush()
        jobs = queue_precompute(s, s.get(Model, mid), ds, featvis_units=0, words=0)
        s.info.clear()
        job = next(j for j in jobs if j.kind == "weight_views")
        assert job.params == {"model_id": mid, "layers": "default"} and job.queue == "cpu"
        job_id = job.id
    with pytest.raises(Waiting):
        run_job(job_id, weight_views)
    assert run_job(reg_job, register) == "succeeded"
    assert run_job(job_id, weight_views) == "succeeded"


@pytest.fixture
def weights_done(settings, tiny_model_job) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """The tiny model registered and its weight views computed: layer name -> layer id."""
    mid, reg_job = tiny_model_job
    assert run_job(reg_job, register) == "succeeded"
    with session_scope(settings.database_url) as s:
        job = request_weight_views(s, s.get(Model, mid))
        s.info.clear()
        job_id = job.id
    assert run_job(job_id, weight_views) == "succeeded"
    with session_scope(settings.database_url) as s:
        message = s.get(Job, job_id).message
        layers = {x.name: x.id for x in s.scalars(select(Layer).where(Layer.model_id == mid))}
    # conv_head is 1x1 with no spatial conv inside it: placed by SVD, no NMF-RGB (said so).
    assert "conv_head: SVD; no NMF-RGB: 1x1 kernels" in message
    assert "blocks.3: SVD; NMF-RGB of 48 units" in message
    return {**layers, "job": job_id}


def test_every_unit_of_a_conv_layer_gets_an_nmf_image_and_svd_coordinates(
    settings, weights_done
) -> None:
    store = make_store(settings)
    with session_scope(settings.database_url) as s:
        for name, units, side in [
            ("conv_stem", 24, 3), ("blocks.0.0.conv", 16, 3), ("blocks.3", 48, 3)
        ]:
            arts = s.scalars(select(Artifact).where(Artifact.layer_id == weights_done[name])).all()
            rgb = sorted((a for a in arts if a.variant == "rgb"), key=lambda a: a.unit_index)
            assert [a.unit_index for a in rgb] == list(range(units))
            img = Image.open(io.BytesIO(store.get(rgb[0].storage_key)))
            assert img.format == "PNG" and img.mode == "RGB" and img.size == (96, 96)
            assert rgb[0].meta["kernel"] == [side, side]
            assert rgb[0].provenance["params"]["method"] == "nmf-rgb"
            (svd,) = [a for a in arts if a.kind == "weights_svd"]
            assert svd.unit_index is None
            coords = json.loads(store.get(svd.storage_key))["units"]
            assert len(coords) == units and all(len(c) == 2 for c in coords)
            (factors,) = [a for a in arts if a.variant == "factors"]
            colours = json.loads(store.get(factors.storage_key))["colours"]
            assert list(colours) == ["red", "green", "blue"]
            names = {t["name"] for tops in colours.values() for t in tops}
            assert names <= {"R", "G", "B"} if name == "conv_stem" else names.isdisjoint("RGB")
        # The kernel views (structure views beside them are tested in test_weight_structure_task).
        views = Artifact.kind.in_(("weights_nmf", "weights_svd"))
        head = s.scalars(
            select(Artifact).where(Artifact.layer_id == weights_done["conv_head"], views)
        )
        assert [a.kind for a in head] == ["weights_svd"]
        blocks3 = s.scalars(
            select(Artifact).where(Artifact.layer_id == weights_done["blocks.3"], views)
        )
        # Expanded through the 1x1 projection, past the squeeze-excite gate.
        assert next(iter(blocks3)).provenance["params"]["convs"] == [
            "blocks.3.0.conv_dw",
            "blocks.3.0.conv_pwl",
        ]
        count = len(s.scalars(select(Artifact)).all())
    # A re-delivered job does nothing; a re-run replaces, never duplicates.
    assert run_job(weights_done["job"], weight_views) == "succeeded"
    with session_scope(settings.database_url) as s:
        s.get(Job, weights_done["job"]).state = "queued"
    assert run_job(weights_done["job"], weight_views) == "succeeded"
    with session_scope(settings.database_url) as s:
        assert len(s.scalars(select(Artifact)).all()) == count


def test_unit_page_weights_tab_shows_the_image_and_the_placement(client, weights_done) -> None:
    r = client.get(f"/models/{SLUG}/blocks.0.0.conv/5?view=weights", headers=HTML)
    page = BeautifulSoup(r.text, "html.parser")
    tab = page.select_one(".tabs a[aria-selected=true]")
    assert tab.text.strip() == "Weights" and tab["href"] == "?view=weights"
    img = page.select_one(".weights .nmf img")
    loaded = client.get(img["src"])
    assert loaded.status_code == 200 and loaded.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(loaded.content)).size == (96, 96)
    assert "fitted once for all units of blocks.0.0.conv" in page.select_one(".nmf-about").text
    assert len(page.select(".nmf-colours li")) == 3
    svg = page.select_one(".svd svg")
    assert svg.select_one("circle.current title").text == "unit 5 (this unit)"
    links = [a["href"] for a in svg.select("a")]
    assert len(links) == 15 and f"/models/{SLUG}/blocks.0.0.conv/4?view=weights" in links
    # conv_head: the placement only.
    head = BeautifulSoup(
        client.get(f"/models/{SLUG}/conv_head/7?view=weights", headers=HTML).text, "html.parser"
    )
    assert head.select_one(".weights .nmf") is None and head.select_one(".svd circle.current")
    assert "1×1 convolutions" in head.select_one(".nmf-none").text

    unit = client.get(f"/api/v1/models/{SLUG}/layers/blocks.0.0.conv/units/5").json()
    kinds = {(a["kind"], a["variant"]) for a in unit["artifacts"]}
    assert {("weights_nmf", "rgb"), ("weights_nmf", "factors"), ("weights_svd", "")} <= kinds
    grid = BeautifulSoup(
        client.get(f"/models/{SLUG}/blocks.0.0.conv?view=weights", headers=HTML).text, "html.parser"
    )
    thumbs = grid.select(".unit-grid img.pixelated")
    assert len(thumbs) == 16 and "weights_nmf" in thumbs[0]["src"]


def test_weight_views_api_checks_layers_and_queues_a_job(client, admin, weights_done) -> None:
    url = f"/api/v1/models/{SLUG}/weights"
    assert client.post(url, json={"layers": ["nope"]}, headers=admin).status_code == 422
    assert client.post(url, json={"layers": ["blocks.1"]}).status_code == 401
    r = client.post(url, json={"layers": ["blocks.1"]}, headers=admin)
    assert r.status_code == 202
    job = r.json()
    assert job["kind"] == "weight_views" and job["state"] == "queued"


def test_structure_views_come_with_the_weight_views(client, weights_done) -> None:
    api = f"/api/v1/models/{SLUG}/layers"
    circuits = client.get(f"{api}/blocks.3/circuits").json()
    assert circuits["inputs"]["layer"] == "blocks.2" and circuits["inputs"]["method"] == "expanded"
    assert circuits["outputs"]["layer"] == "blocks.4" and len(circuits["units"]) == 48
    stem = client.get(f"{api}/conv_stem/circuits?unit=0").json()
    assert stem["inputs"] is None and stem["outputs"]["layer"] == "blocks.0.0.conv"
    assert stem["unit"]["outputs"]["positive"]
    band = client.get(f"{api}/blocks.3/banding").json()
    assert -1 <= band["score"] <= 1 and band["maps"].startswith("NMF-RGB maps, 3x3, expanded")
    assert "1x1 convolutions" in client.get(f"{api}/conv_head/banding").json()["reason"]
    assert 4 <= client.get(f"{api}/blocks.3/clusters").json()["k"] <= 19
    pair = client.get(f"{api}/conv_stem/svd-pair").json()
    assert len(pair["units"]) == 24 and len(pair["explained"]) == 2
    colour = client.get(f"{api}/blocks.3/properties").json()["colour"]
    assert len(colour) == 48 and all(0 <= c <= 1 for c in colour)
    # The layer page of a 1x1 layer says why its grid has no images.
    head = BeautifulSoup(
        client.get(f"/models/{SLUG}/conv_head?view=weights", headers=HTML).text, "html.parser"
    )
    assert "1x1 convolutions" in head.select_one(".banding .nmf-none").text
    # From a unit to its strongest input, whose page lists its outputs into this layer.
    page = BeautifulSoup(
        client.get(f"/models/{SLUG}/blocks.3/5?view=weights", headers=HTML).text, "html.parser"
    )
    link = page.select_one(".circuit-side[data-side=inputs] .circuit-links a")
    assert link["href"].startswith(f"/models/{SLUG}/blocks.2/")
    back = BeautifulSoup(client.get(link["href"], headers=HTML).text, "html.parser")
    outs = back.select(".circuit-side[data-side=outputs] .circuit-links a")
    assert outs and all(a["href"].startswith(f"/models/{SLUG}/blocks.3/") for a in outs)


def test_a_vits_mlp_layers_get_reasons_not_errors(settings, client) -> None:
    with session_scope(settings.database_url) as s:
        m, job = add_model(s, "timm:test_vit")
        s.info.clear()
        mid, job_id = m.id, job.id
    assert run_job(job_id, register) == "succeeded"
    with session_scope(settings.database_url) as s:
        wjob = request_weight_views(s, s.get(Model, mid))
        s.info.clear()
        wjob_id = wjob.id
    assert run_job(wjob_id, weight_views) == "succeeded"
    with session_scope(settings.database_url) as s:
        layer = s.scalar(select(Layer).where(Layer.model_id == mid, Layer.is_default.is_(True)))
        slug, name = s.get(Model, mid).slug, layer.name
    api = f"/api/v1/models/{slug}/layers/{name}"
    assert "feature map" in client.get(f"{api}/circuits").json()["reason"]
    assert "outputs its units" in client.get(f"{api}/banding").json()["reason"]
    page = BeautifulSoup(
        client.get(f"/models/{slug}/{name}?view=weights", headers=HTML).text, "html.parser"
    )
    assert "transformer MLP" in page.select_one(".structure-none").text
