"""The dataset-examples task end to end in-process: real database, real store, real model."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sqlalchemy import func, select, update

from backend.catalog.service import add_model
from backend.datasets.service import add_dataset
from backend.db.models import Artifact, Dataset, Job, Layer, Model
from backend.db.models import Image as ImageRow
from backend.db.session import session_scope
from backend.precompute import queue_precompute
from backend.storage import make_store
from contracts.layout import Layout
from workers.ml.hooks import run_to, to_unit_maps
from workers.ml.images import load_rgb
from workers.ml.models import load_model
from workers.ml.preprocess import to_batch
from workers.ml.receptive_field import position_center
from workers.ml.sheets import drawing_processes
from workers.ml.sources import read_images
from workers.tasks.catalog import register
from workers.tasks.datasets import import_folder
from workers.tasks.jobrun import Waiting, run_job
from workers.tasks.mining import K, mine, mine_shard
from workers.tasks.runtime import DatasetImages

SPEC = "timm:test_efficientnet"
LAYERS = ("blocks.0", "blocks.2")


def photos(root: Path, n: int = 14, tars: bool = False) -> Path:
    rng = np.random.default_rng(0)
    folder = root / "imgs"
    folder.mkdir()
    for i in range(n):
        size = (int(rng.integers(90, 260)), int(rng.integers(90, 260)))  # some smaller than 160
        arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        arr[:: 1 + i % 5, :, i % 3] = 255  # stripes of different frequencies and colours
        Image.fromarray(arr).save(folder / f"img{i:02d}.png")
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff garbage")
    if tars:
        # WebDataset-style: two tar shards of samples <key>.png, plus loose files.
        for t, members in (("shard-000.tar", range(0, 6)), ("sub/shard-001.tar", range(6, 10))):
            (folder / t).parent.mkdir(parents=True, exist_ok=True)
            with tarfile.open(folder / t, "w") as tf:
                for i in members:
                    tf.add(folder / f"img{i:02d}.png", arcname=f"{i:06d}.png")
                    (folder / f"img{i:02d}.png").unlink()
    return folder


# "threads": the sheets drawn on a thread, as where no drawing process can be forked.
@pytest.fixture(params=["folder", "tars", "threads"])
def mined(request, settings, tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    if request.param == "threads":
        monkeypatch.setattr("workers.ml.sheets.RENDER_PROCESSES", 1)
    # Otherwise, on more than one core, forked drawing processes draw the sheets.
    assert (drawing_processes() > 1) == (request.param != "threads" and (os.cpu_count() or 1) > 1)
    # Three shards of 5, 5 and 4 images: the merged result must still equal brute force.
    monkeypatch.setattr("workers.tasks.mining.SHARD_SIZE", 5)
    # Sheets rendered in several blocks per layer.
    monkeypatch.setattr("workers.ml.sheets.BLOCK_UNITS", 7)
    # The image rows each shard job loads.
    shard_rows: list[int] = []
    of = DatasetImages.of.__func__  # type: ignore[attr-defined]

    def spy(cls, session, ds, limit=None, **only):  # type: ignore[no-untyped-def]
        images = of(cls, session, ds, limit, **only)
        if "positions" in only:
            shard_rows.append(len(images.ids))
        return images

    monkeypatch.setattr(DatasetImages, "of", classmethod(spy))
    url = settings.database_url
    with session_scope(url) as s:
        ds, ds_job = add_dataset(s, str(photos(tmp_path, tars=request.param == "tars")), "imgs")
        m, m_job = add_model(s, SPEC)
        s.info.clear()  # run in-process, not through the broker
        ids = (ds.id, m.id, ds_job.id, m_job.id)
    ds_id, model_id, ds_job_id, m_job_id = ids
    with session_scope(url) as s:
        job = queue_precompute(s, s.get(Model, model_id), s.get(Dataset, ds_id))[0]
        s.info.clear()
        mine_job = job.id
    with pytest.raises(Waiting):  # the model is not registered yet
        run_job(mine_job, mine)
    assert run_job(ds_job_id, import_folder) == "succeeded"
    assert run_job(m_job_id, register) == "succeeded"
    with session_scope(url) as s:
        # Keep the test quick: mine two of the default layers.
        s.execute(
            update(Layer)
            .where(Layer.model_id == model_id, Layer.name.not_in(LAYERS))
            .values(is_default=False)
        )
    with pytest.raises(Waiting):  # queues one job per shard, then waits for them
        run_job(mine_job, mine)
    with session_scope(url) as s:
        shard_jobs = s.scalars(select(Job.id).where(Job.kind == "mine_shard")).all()
    # folder: 14 images in shards of 5; tars: 4 loose images (one shard) + one per tar.
    assert len(shard_jobs) == 3
    for j in shard_jobs:
        assert run_job(j, mine_shard) == "succeeded"
    # Each shard job loads its own images' rows, none the whole dataset's.
    assert sorted(shard_rows) == ([4, 4, 6] if request.param == "tars" else [4, 5, 5])
    assert run_job(mine_job, mine) == "succeeded"
    return model_id, ds_id, mine_job


def brute_force(url: str, ds_id: int, path: str) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    loaded = load_model(SPEC)
    with session_scope(url) as s:
        rows = s.execute(
            select(ImageRow.id, ImageRow.path)
            .where(ImageRow.dataset_id == ds_id)
            .order_by(ImageRow.position)
        ).all()
        source = s.get(Dataset, ds_id).source
    data = read_images(Path(source), [p for _, p in rows])
    x = to_batch([load_rgb(data[p]) for _, p in rows], loaded.preprocess)
    with torch.inference_mode():
        maps = to_unit_maps(run_to(loaded.image_model, x, [path])[path], Layout("nchw"))
    return [r[0] for r in rows], maps.flatten(2).max(-1).values, maps  # (N, U), (N, U, H, W)


def test_mining_publishes_exact_examples_for_every_unit(settings, mined) -> None:
    model_id, ds_id, _ = mined
    url = settings.database_url
    store = make_store(settings)
    with session_scope(url) as s:
        layer = s.scalar(select(Layer).where(Layer.model_id == model_id, Layer.name == "blocks.2"))
        units, name = layer.unit_count, layer.name
        arts = s.scalars(select(Artifact).where(Artifact.layer_id == layer.id)).all()
        kinds = {(a.unit_index, a.kind, a.variant) for a in arts}
        index = {a.unit_index: a.storage_key for a in arts if a.kind == "dataset_examples"}
        assert s.get(Dataset, ds_id).skipped_count == 1
    for u in range(units):
        for kv in [
            ("dataset_examples", ""),
            ("example_crop", "top"),
            ("example_crop", "thumb"),
            ("example_heatmap", "top"),
            ("neuron_card", ""),
        ]:
            assert (u, *kv) in kinds, (u, kv)
    ids, scores, maps = brute_force(url, ds_id, name)
    n = len(ids)
    for u in range(units):
        data = json.loads(store.get(index[u]))
        expect = sorted(range(n), key=lambda i: (-float(scores[i, u]), ids[i]))[: min(K, n)]
        assert [e["image_id"] for e in data["top"]] == [ids[i] for i in expect]
        np.testing.assert_allclose(
            [e["score"] for e in data["top"]],
            [float(scores[i, u]) for i in expect],
            rtol=1e-4,
            atol=1e-5,
        )
        grid = tuple(maps.shape[-2:])
        for e in data["top"]:
            top, left, bottom, right = e["box"]
            cy, cx = position_center(e["y"], e["x"], grid, data["input_size"])
            assert top <= cy < bottom and left <= cx < right  # each crop contains its argmax
        assert data["stats"]["count"] == n


def test_a_rerun_writes_nothing_new(settings, mined) -> None:
    _, _, job_id = mined
    store = make_store(settings)
    url = settings.database_url
    before_keys = store.list()
    with session_scope(url) as s:
        before_rows = s.scalar(select(func.count(Artifact.id)))
    assert run_job(job_id, mine) == "succeeded"  # a re-delivered message: nothing to do
    with session_scope(url) as s:
        s.execute(update(Job).where(Job.id == job_id).values(state="queued"))
    assert run_job(job_id, mine) == "succeeded"  # recomputed: same keys, rows replaced
    assert store.list() == before_keys
    with session_scope(url) as s:
        assert s.scalar(select(func.count(Artifact.id))) == before_rows


def test_another_shard_size_mines_its_own_spans(settings, mined, monkeypatch, request) -> None:
    # States saved for shards of 5 must not stand in for shards of 7 (another span each).
    model_id, ds_id, job_id = mined
    if "folder" not in request.node.callspec.id:
        pytest.skip("the other cases cut the same way, or tar shards (one per tar)")
    url = settings.database_url
    monkeypatch.setattr("workers.tasks.mining.SHARD_SIZE", 7)
    with session_scope(url) as s:
        s.execute(update(Job).where(Job.id == job_id).values(state="queued"))
        before = set(s.scalars(select(Job.id).where(Job.kind == "mine_shard")))
    with pytest.raises(Waiting):
        run_job(job_id, mine)
    with session_scope(url) as s:
        new = set(s.scalars(select(Job.id).where(Job.kind == "mine_shard"))) - before
    assert len(new) == 2  # 14 images: [0, 7) and [7, 14)
    for j in new:
        assert run_job(j, mine_shard) == "succeeded"
    assert run_job(job_id, mine) == "succeeded"
    with session_scope(url) as s:
        layer = s.scalar(select(Layer).where(Layer.model_id == model_id, Layer.name == "blocks.2"))
        key = s.scalar(
            select(Artifact.storage_key).where(
                Artifact.layer_id == layer.id,
                Artifact.unit_index == 0,
                Artifact.kind == "dataset_examples",
            )
        )
    data = json.loads(make_store(settings).get(key))
    ids, scores, _ = brute_force(url, ds_id, "blocks.2")
    expect = sorted(range(len(ids)), key=lambda i: (-float(scores[i, 0]), ids[i]))[:K]
    assert [e["image_id"] for e in data["top"]] == [ids[i] for i in expect]
    assert data["stats"]["count"] == len(ids)
