"""Dataset sources at scale: shard plans from streamed rows, tar shards read once, and the
render blocks whose held images do not grow with the dataset."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import workers.ml.sources as sources
from backend.config import get_settings
from workers.ml.mining import LayerReducer
from workers.ml.sheets import SHOWN, render_blocks, shown_images
from workers.ml.sources import ShardSpan, iter_images, plan_shards
from workers.tasks.runtime import DatasetImages, loader_workers


def test_plan_shards_gives_position_spans_from_streamed_rows() -> None:
    # Loose files split by size, each tar shard whole; positions 2 and 6 were skipped.
    rows = [
        (0, "a.png"),
        (1, "b.png"),
        (3, "c.png"),
        (4, "t1.tar::0.png"),
        (5, "t1.tar::1.png"),
        (7, "sub/t2.tar::0.png"),
    ]
    assert plan_shards(iter(rows), 2) == [
        ShardSpan(0, 2, 2),
        ShardSpan(3, 4, 1),
        ShardSpan(4, 6, 2),
        ShardSpan(7, 8, 1),
    ]
    assert plan_shards(iter([]), 2) == []
    with pytest.raises(ValueError, match="positive"):
        plan_shards(iter(rows), 0)


def _png(seed: int) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def tarred(tmp_path: Path) -> DatasetImages:
    """Two loose files and two tar shards of four images: ids 0-9."""
    names = {0: "a.png", 1: "b.png"}
    (tmp_path / "a.png").write_bytes(_png(0))
    (tmp_path / "b.png").write_bytes(_png(1))
    for t, tar in enumerate(("s0.tar", "s1.tar")):
        with tarfile.open(tmp_path / tar, "w") as tf:
            for j in range(4):
                data = _png(10 + 4 * t + j)
                info = tarfile.TarInfo(f"{j:03d}.png")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
                names[2 + 4 * t + j] = f"{tar}::{j:03d}.png"
    return DatasetImages(tmp_path, list(names), names)


def test_batches_read_each_tar_once_and_hold_one_batch(tarred, monkeypatch) -> None:
    expected = {i: np.asarray(im) for i, im in zip(tarred.ids, tarred.decode(), strict=True)}
    opened: list[str] = []
    members: list[str] = []
    real_iter_tar = sources.iter_tar

    def counting(root, tar, max_bytes=sources.DEFAULT_MAX_BYTES):  # type: ignore[no-untyped-def]
        opened.append(tar)
        for name, data in real_iter_tar(root, tar, max_bytes):
            members.append(name)
            yield name, data

    monkeypatch.setattr(sources, "iter_tar", counting)
    wanted = [9, 0, 3, 2, 4]  # not in stored order; none from s1.tar but its last member
    images = DatasetImages(tarred.root, wanted, {i: tarred.names[i] for i in wanted})
    batches = list(images.batches(2))
    assert [len(ids) for ids, _ in batches] == [2, 2, 1]
    got = [i for ids, _ in batches for i in ids]
    assert sorted(got) == sorted(wanted)
    assert sorted(opened) == ["s0.tar", "s1.tar"]  # each tar once
    # s0.tar is read only as far as its last wanted member (003.png is never read).
    assert "s0.tar::003.png" not in members
    for ids, imgs in batches:
        for i, im in zip(ids, imgs, strict=True):
            assert np.array_equal(np.asarray(im), expected[i])


def test_iter_images_names_what_is_gone(tarred) -> None:
    with pytest.raises(FileNotFoundError, match="s0.tar::009.png"):
        list(iter_images(tarred.root, ["s0.tar::000.png", "s0.tar::009.png"]))


def test_render_blocks_bound_the_images_they_hold(monkeypatch) -> None:
    monkeypatch.setattr("workers.ml.sheets.BLOCK_IMAGES", 40)
    monkeypatch.setattr("workers.ml.sheets.BLOCK_UNITS", 5)
    gen = torch.Generator().manual_seed(0)
    results = {}
    for path, units in (("a", 7), ("b", 9)):
        red = LayerReducer(k=SHOWN, sketch_size=8)
        red.update(torch.randn(300, units, 2, 2, generator=gen), torch.arange(300))
        results[path] = red.finalize()
    blocks = list(render_blocks(results))
    # Every unit once, in order; no block over its bounds (a unit shows up to 2 x 16 images).
    assert [x for b in blocks for x in b] == [("a", u) for u in range(7)] + [
        ("b", u) for u in range(9)
    ]
    assert len(blocks) > 16 / 5
    for b in blocks:
        assert len(b) <= 5
        assert len(shown_images(results, b)) <= 40


@pytest.mark.parametrize(
    ("setting", "dev", "cores", "workers"),
    [
        ("3", "cpu", 16, 3),
        ("0", "cuda", 16, 0),
        (None, "cuda", 16, 4),
        (None, "cuda", 2, 1),
        (None, "cuda", 1, 0),
        (None, "cpu", 16, 0),  # the forward's threads use the cores already
    ],
)
def test_loader_workers_follow_the_setting(monkeypatch, setting, dev, cores, workers) -> None:
    if setting is None:
        monkeypatch.delenv("MICROSCOPE_LOADER_WORKERS", raising=False)
    else:
        monkeypatch.setenv("MICROSCOPE_LOADER_WORKERS", setting)
    monkeypatch.setattr("os.cpu_count", lambda: cores)
    monkeypatch.setattr("workers.tasks.runtime.device", lambda: dev)
    get_settings.cache_clear()
    try:
        assert loader_workers() == workers
    finally:
        get_settings.cache_clear()
