"""The weight-views job's structure views on real architectures at random init: GoogLeNet
(its Inception modules' branches and the article's branch question on mixed3b) and
ResNet-50 (residual circuits, banding of the last block), through the pages and the API."""

from __future__ import annotations

import json

import pytest
from bs4 import BeautifulSoup
from sqlalchemy import select

from backend.catalog.service import add_model
from backend.db.models import Artifact, Job, Layer, Model, Unit
from backend.db.session import session_scope
from backend.precompute import request_weight_views
from backend.storage import make_store
from contracts import weight_views as wv
from workers.tasks.catalog import register
from workers.tasks.jobrun import run_job
from workers.tasks.weights import weight_views

pytestmark = pytest.mark.slow
HTML = {"Accept": "text/html"}

def payloads(settings, model_id: int, kind: str) -> dict[str, object]:  # type: ignore[no-untyped-def]
    store = make_store(settings)
    with session_scope(settings.database_url) as s:
        rows = s.execute(
            select(Layer.name, Artifact.storage_key)
            .join(Artifact, Artifact.layer_id == Layer.id)
            .where(Layer.model_id == model_id, Artifact.kind == kind)
        ).all()
        return {
            name: wv.PAYLOADS[kind].model_validate(json.loads(store.get(key)))
            for name, key in rows
        }


def registered(settings, spec: str) -> int:  # type: ignore[no-untyped-def]
    with session_scope(settings.database_url) as s:
        m, job = add_model(s, spec)
        s.info.clear()
        mid, job_id = m.id, job.id
    assert run_job(job_id, register) == "succeeded"
    return mid


def run_weight_views(settings, mid: int, layers: list[str] | None = None) -> str:  # type: ignore[no-untyped-def]
    with session_scope(settings.database_url) as s:
        job = request_weight_views(s, s.get(Model, mid), layers)
        s.info.clear()
        job_id = job.id
    assert run_job(job_id, weight_views) == "succeeded"
    with session_scope(settings.database_url) as s:
        return str(s.get(Job, job_id).message)


# torchvision warns that GoogLeNet's default init will change.
@pytest.mark.filterwarnings("ignore:The default weight initialization of GoogleNet")
def test_googlenet_branches_circuits_and_the_mixed3b_question(settings, client) -> None:
    mid = registered(settings, "torchvision:googlenet")
    # The registered names: Microscope's mixed3a... for torchvision's inception3a...
    layers = ["conv1", "conv2", "conv3", "mixed3a", "mixed3b", "mixed4a"]
    message = run_weight_views(settings, mid, layers)
    assert (
        "mixed3b: skipped (no convolution in inception3b outputs its units); "
        "NMF-RGB per branch: 3x3 (192 units), 5x5 (96 units)"
    ) in message

    branches = payloads(settings, mid, wv.BRANCHES)
    got = [(b.name, b.stop - b.start) for b in branches["mixed3b"].branches]
    assert got == [("1x1", 128), ("3x3", 192), ("5x5", 96), ("pool_reduce", 64)]
    assert branches["conv3"].branches == [] and branches["conv3"].reason

    circuits = payloads(settings, mid, wv.CIRCUITS)
    c3 = circuits["conv3"]
    assert c3.inputs.layer == "conv2" and c3.inputs.method == "weights"
    assert c3.inputs.convs == ["conv3.conv"]
    mixed = circuits["mixed3b"]
    assert mixed.inputs.layer == "mixed3a" and mixed.inputs.method == "expanded"
    assert len(mixed.inputs.convs) == 6 and mixed.outputs.layer == "mixed4a"
    assert len(mixed.units) == 480 and all(u.inputs and u.outputs for u in mixed.units)
    # The strongest link between the two modules is the top of its row and of its column.
    j, (i, w) = max(
        ((j, u.inputs.positive[0]) for j, u in enumerate(mixed.units)), key=lambda t: t[1][1]
    )
    assert circuits["mixed3a"].units[i].outputs.positive[0] == (j, w)

    banding = payloads(settings, mid, wv.BANDING)
    b = banding["mixed3b"]
    assert b.score is not None and -1 <= b.score <= 1
    # torchvision's "5x5" branch convolves 3x3 (a known port difference): the page says so.
    assert "3x3 branch, 3x3 kernels (192 units)" in b.maps
    assert "5x5 branch, 3x3 kernels (96 units)" in b.maps
    assert sum(u is not None for u in b.units) == 192 + 96  # 1x1 branches have no map
    assert banding["conv2"].reason  # 1x1
    groups = payloads(settings, mid, wv.CLUSTERS)["mixed3b"]
    assert 4 <= groups.k <= 19 and sum(len(g.units) for g in groups.groups) == 192 + 96
    pair = payloads(settings, mid, wv.SVD_PAIR)["conv1"]
    assert pair.second == ["conv2.conv"] and len(pair.units) == 64
    assert 0 < pair.explained[1] <= pair.explained[0] < 1
    props = payloads(settings, mid, wv.PROPERTIES)
    assert not props["conv1"].carried and props["mixed3b"].carried
    assert len(props["mixed3b"].colour) == 480

    # The article's question, asked in the browser's terms: 30 curve units in mixed3b.
    with session_scope(settings.database_url) as s:
        layer = s.scalar(select(Layer).where(Layer.model_id == mid, Layer.name == "mixed3b"))
        for u in s.scalars(select(Unit).where(Unit.layer_id == layer.id, Unit.index >= 330)):
            if u.index < 360:
                u.label = "curve"
        slug = s.get(Model, mid).slug
    page = BeautifulSoup(
        client.get(f"/models/{slug}/mixed3b?set=label&q=curve", headers=HTML).text,
        "html.parser",
    )
    assert page.select_one(".branch-result tr.best th").text == "5x5"
    assert float(page.select_one(".branch-result .p-value").text) < 1e-20
    # A unit to its strongest input and back: the input's page lists outputs into 3b.
    unit = BeautifulSoup(
        client.get(f"/models/{slug}/mixed3b/{j}?view=weights", headers=HTML).text,
        "html.parser",
    )
    first = unit.select_one(".circuit-side[data-side=inputs] .circuit-links.pos a")
    assert first["href"] == f"/models/{slug}/mixed3a/{i}?view=weights"
    back = BeautifulSoup(client.get(first["href"], headers=HTML).text, "html.parser")
    top = back.select_one(".circuit-side[data-side=outputs] .circuit-links.pos a")
    assert top["href"] == f"/models/{slug}/mixed3b/{j}?view=weights"
    # Weights drawn branch by branch: a 5x5-branch unit has its image and its branch's
    # colours; a 1x1-branch unit says why it has none.
    five = BeautifulSoup(
        client.get(f"/models/{slug}/mixed3b/350?view=weights", headers=HTML).text, "html.parser"
    )
    assert five.select_one(".weights .nmf img")
    assert "5x5 branch of mixed3b" in five.select_one(".nmf-about").text
    assert len(five.select(".nmf-colours li")) == 3
    one = BeautifulSoup(
        client.get(f"/models/{slug}/mixed3b/10?view=weights", headers=HTML).text, "html.parser"
    )
    assert "1x1 branch of mixed3b makes this unit with a 1" in one.select_one(".nmf-none").text
    grid = BeautifulSoup(
        client.get(f"/models/{slug}/mixed3b?view=weights&offset=300", headers=HTML).text,
        "html.parser",
    )
    assert all("weights_nmf" in img["src"] for img in grid.select(".unit-grid img.pixelated"))
    assert len(grid.select(".unit-grid img.pixelated")) == 96  # 300-395: 3x3 and 5x5 units


@pytest.mark.once  # the weights' arithmetic, not the database (GoogLeNet's runs on both)
def test_resnet50_residual_circuits_and_the_last_blocks_banding(settings, client) -> None:
    mid = registered(settings, "torchvision:resnet50")
    message = run_weight_views(settings, mid, ["conv1", "layer1.0", "layer1.1", "layer4.2"])
    assert "layer4.2: SVD; NMF-RGB of 2048 units" in message
    circuits = payloads(settings, mid, wv.CIRCUITS)
    block = circuits["layer1.1"]
    assert block.inputs.layer == "layer1.0" and block.inputs.method == "expanded"
    assert block.inputs.convs == ["layer1.1.conv1", "layer1.1.conv2", "layer1.1.conv3"]
    assert block.outputs.layer == "layer1.2"  # the chain is every default layer
    assert circuits["layer4.2"].outputs is None  # the last feature-map layer
    assert circuits["layer1.0"].inputs.layer == "conv1"
    band = payloads(settings, mid, wv.BANDING)["layer4.2"]
    assert band.score is not None and "expanded through layer4.2.conv3" in band.maps
    branches = payloads(settings, mid, wv.BRANCHES)["layer4.2"]
    assert branches.branches == [] and "residual block adds" in branches.reason
    pair = payloads(settings, mid, wv.SVD_PAIR)["conv1"]
    assert pair.first == "conv1" and pair.second == ["layer1.0.conv1"]
    with session_scope(settings.database_url) as s:
        slug = s.get(Model, mid).slug
    layer = BeautifulSoup(
        client.get(f"/models/{slug}/layer4.2?view=weights", headers=HTML).text, "html.parser"
    )
    assert layer.select_one(".band-score strong").text == f"{band.score:+.2f}"
    assert layer.select_one(".branches") is None  # no branches: no form
    api = client.get(f"/api/v1/models/{slug}/layers/layer4.2/branches").json()
    assert "residual block adds" in api["reason"]
