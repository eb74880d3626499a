"""Every architecture Microscope is known for, end to end in-process at random init:
registered with its default layers, a handful of photos mined with receptive-field crops,
one unit rendered, and its pages opened."""

from __future__ import annotations

import pytest
from bs4 import BeautifulSoup
from sqlalchemy import select

from backend.catalog.service import add_model
from backend.datasets.service import add_dataset
from backend.db.models import Artifact, Dataset, Job, Layer, Model
from backend.db.session import session_scope
from backend.precompute import request_examples, request_featvis
from tests.workers.test_mining_task import photos
from workers.tasks.catalog import register
from workers.tasks.datasets import import_folder
from workers.tasks.featvis import render
from workers.tasks.jobrun import Waiting, run_job
from workers.tasks.mining import cached_model, mine, mine_shard

HTML = {"Accept": "text/html"}
# spec -> (input side for the test: small where the architecture takes any size, the rule
# its defaults come from). VGG11 stands in for VGG19: the same plain-convnet rule, a third of
# the CPU time.
ARCHS = {
    "torchvision:googlenet": (64, "inception"),
    "torchvision:alexnet": (64, "plain"),
    "torchvision:vgg11": (64, "plain"),
    "torchvision:resnet50": (64, "residual"),
    "torchvision:inception_v3": (80, "inception"),
    "torchvision:mobilenet_v3_large": (64, "inverted-residual"),
    "timm:test_vit": (None, "transformer"),  # fixed patch grid: its own 160 px
    "timm:efficientnet_b0": (64, "inverted-residual"),
    "open_clip:RN50": (None, "clip-resnet"),  # fixed attention-pool grid: its own 224 px
}


def _mixed3b_has_four_branches_with_a_96_unit_5x5(client, slug: str) -> None:  # type: ignore[no-untyped-def]
    """GoogLeNet's mixed3b, the Branch Specialization article's layer: 128 + 192 + 96 + 64
    = 480 units, its 5x5 branch the third."""
    layer = client.get(f"/api/v1/models/{slug}/layers/mixed3b").json()
    assert (layer["module_path"], layer["unit_count"], layer["is_default"]) == (
        "inception3b",
        480,
        True,
    )
    assert [(b["name"], b["start"], b["stop"]) for b in layer["branches"]] == [
        ("1x1", 0, 128),
        ("3x3", 128, 320),
        ("5x5", 320, 416),
        ("pool_reduce", 416, 480),
    ]
    unit = client.get(f"/api/v1/models/{slug}/layers/mixed3b/units/350").json()
    assert unit["branch"] == {"name": "5x5", "start": 320, "stop": 416}
    grid = BeautifulSoup(
        client.get(f"/models/{slug}/mixed3b?offset=300", headers=HTML).text, "html.parser"
    )
    shares = {
        tr["data-branch"]: [td.get_text() for td in tr.select("td")]
        for tr in grid.select("table.branch-table tbody tr")
    }
    assert shares["5x5"][2:] == ["96", "20.0%"]
    # The page from unit 300 starts in the 3x3 branch and runs into the 5x5 one.
    assert [h["data-branch"] for h in grid.select("h3.branch-head")] == ["3x3", "5x5"]
    unit_page = BeautifulSoup(
        client.get(f"/models/{slug}/mixed3b/350", headers=HTML).text, "html.parser"
    )
    assert "5x5" in unit_page.select_one("p.unit-branch").get_text()
    names = [x["name"] for x in client.get(f"/api/v1/models/{slug}/layers").json()]
    assert names == ["mixed3a", "mixed3b", *[f"mixed4{c}" for c in "abcde"], "mixed5a", "mixed5b"]


def _plain_convs_are_numbered(client, slug: str) -> None:  # type: ignore[no-untyped-def]
    layers = client.get(f"/api/v1/models/{slug}/layers").json()
    assert [x["name"] for x in layers] == [
        "conv1_1", "conv2_1", "conv3_1", "conv3_2", "conv4_1", "conv4_2", "conv5_1", "conv5_2"
    ]
    assert all(x["module_path"].startswith("features.") for x in layers)  # the ReLUs


def _alexnet_convs(client, slug: str) -> None:  # type: ignore[no-untyped-def]
    layers = client.get(f"/api/v1/models/{slug}/layers?all=true").json()
    assert [x["name"] for x in layers if x["is_default"]] == [f"conv{i}" for i in range(1, 6)]
    assert [x["name"] for x in layers if x["kind"] in ("linear", "head")][-3:] == [
        "fc6", "fc7", "fc8"
    ]


EXTRA_CHECKS = {
    "torchvision:googlenet": _mixed3b_has_four_branches_with_a_96_unit_5x5,
    "torchvision:vgg11": _plain_convs_are_numbered,
    "torchvision:alexnet": _alexnet_convs,
}


@pytest.fixture
def small_inputs(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """Models of this test see their test input side (registration, mining and renders)."""
    import workers.ml.models as models

    side = ARCHS[request.node.callspec.params["spec"]][0]
    native = models.preprocess_for

    def small(ms, image_model):  # type: ignore[no-untyped-def]
        cfg = native(ms, image_model)
        return cfg if side is None else {**cfg, "input_size": side}

    monkeypatch.setattr(models, "preprocess_for", small)
    monkeypatch.setenv("MICROSCOPE_FEATVIS_STEPS", "2")
    cached_model.cache_clear()
    yield side
    cached_model.cache_clear()


@pytest.mark.slow
@pytest.mark.once  # what it checks is the models' mechanics; the database side is everyone's
@pytest.mark.parametrize("spec", list(ARCHS))
def test_architecture_registers_mines_and_opens(
    spec, settings, tmp_path, client, small_inputs
) -> None:
    from backend.config import get_settings

    get_settings.cache_clear()
    url = settings.database_url
    with session_scope(url) as s:
        ds, ds_job = add_dataset(s, str(photos(tmp_path, n=6)), "imgs")
        m, m_job = add_model(s, spec)
        s.info.clear()
        ds_id, mid, slug, ds_job_id, m_job_id = ds.id, m.id, m.slug, ds_job.id, m_job.id
    assert run_job(ds_job_id, import_folder) == "succeeded"
    assert run_job(m_job_id, register) == "succeeded"

    layers = client.get(f"/api/v1/models/{slug}/layers").json()
    assert len(layers) >= 3, layers
    model_json = client.get(f"/api/v1/models/{slug}").json()
    assert model_json["pretrained"] is False and model_json["family"]
    if spec in EXTRA_CHECKS:
        EXTRA_CHECKS[spec](client, slug)
    # Every unit of a mined layer gets its sheets drawn: mine the smallest default layer when
    # it is small, else the smallest layer of all (a stem or branch convolution).
    everything = client.get(f"/api/v1/models/{slug}/layers?all=true").json()
    small = min(layers, key=lambda x: (x["unit_count"], x["order"]))
    if small["unit_count"] > 64:
        small = min(everything, key=lambda x: (x["unit_count"], x["order"]))
    smallest = small["name"]
    with session_scope(url) as s:
        model, dataset = s.get(Model, mid), s.get(Dataset, ds_id)
        job = request_examples(s, model, dataset, [smallest])
        s.info.clear()
        mine_id = job.id
    with pytest.raises(Waiting):
        run_job(mine_id, mine)
    with session_scope(url) as s:
        shards = s.scalars(select(Job.id).where(Job.kind == "mine_shard")).all()
    for j in shards:
        assert run_job(j, mine_shard) == "succeeded"
    assert run_job(mine_id, mine) == "succeeded"
    # One unit of a default layer rendered (two steps, at the test's input side).
    first_default = min(layers, key=lambda x: (x["unit_count"], x["order"]))["name"]
    with session_scope(url) as s:
        layer = s.scalar(select(Layer).where(Layer.model_id == mid, Layer.name == first_default))
        job = request_featvis(s, s.get(Model, mid), layer, 0)
        s.info.clear()
        render_id, rendered = job.id, layer.id
    assert run_job(render_id, render) == "succeeded"
    with session_scope(url) as s:
        mined = s.scalar(select(Layer.id).where(Layer.model_id == mid, Layer.name == smallest))
        kinds = {
            (layer_id, kind)
            for layer_id, kind in s.execute(
                select(Artifact.layer_id, Artifact.kind).where(Artifact.unit_index == 0)
            )
        }
    assert {(mined, "dataset_examples"), (mined, "example_crop"), (rendered, "featvis")} <= kinds

    page = BeautifulSoup(
        client.get(f"/models/{slug}/{smallest}/0?view=examples", headers=HTML).text, "html.parser"
    )
    sheets = page.select("figure.sheet img")
    assert sheets and all(img["src"].startswith("/objects/") for img in sheets)
    index = client.get(f"/api/v1/models/{slug}/layers/{smallest}/units/0").json()
    boxes = [a for a in index["artifacts"] if a["kind"] == "dataset_examples"]
    examples = client.get(boxes[0]["url"]).json()["top"]
    # Receptive-field crops: every example's box lies inside the model's input.
    side = client.get(f"/api/v1/models/{slug}").json()["input_size"]
    assert side == (small_inputs or side)
    assert examples
    for e in examples:
        top, left, bottom, right = e["box"]
        assert 0 <= top < bottom <= side and 0 <= left < right <= side
    model_page = BeautifulSoup(client.get(f"/models/{slug}", headers=HTML).text, "html.parser")
    assert len(model_page.select("figure.arch rect.arch-box")) == len(layers)


