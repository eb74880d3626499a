"""Dataset images over the size cap are skipped unread and counted as "too large"."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.config import get_settings
from backend.datasets.service import add_dataset
from backend.db.models import Dataset, Job
from backend.db.session import session_scope
from workers.ml.images import BadImage, read_capped
from workers.ml.sources import iter_sources, iter_tar, read_images
from workers.tasks.datasets import import_folder
from workers.tasks.jobrun import run_job

MB = 2**20


def _png(path: Path, side: int, seed: int) -> Path:
    # Random pixels do not compress: a side of 700 makes a PNG of ~1.4 MB.
    arr = np.random.default_rng(seed).integers(0, 255, (side, side, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return path


def _dataset(root: Path) -> Path:
    root.mkdir()
    _png(root / "small.png", 64, 0)
    _png(root / "huge.png", 700, 1)
    with tarfile.open(root / "shard.tar", "w") as tf:
        tf.add(_png(root / "a.png", 64, 2), arcname="000.png")
        tf.add(_png(root / "b.png", 700, 3), arcname="001.png")
    (root / "a.png").unlink()
    (root / "b.png").unlink()
    return root


def test_read_capped_refuses_without_reading(tmp_path: Path) -> None:
    f = _png(tmp_path / "x.png", 700, 0)
    assert read_capped(f, 2 * MB) == f.read_bytes()
    with pytest.raises(BadImage) as e:
        read_capped(f, MB)
    assert e.value.reason == "too large"


def test_sources_and_tars_hold_the_cap(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "ds")
    outcome = {}
    for name, read in iter_sources(root, MB):
        try:
            outcome[name] = len(read())
        except BadImage as e:
            outcome[name] = e.reason
    assert outcome["huge.png"] == "too large"
    assert outcome["shard.tar::001.png"] == "too large"
    assert isinstance(outcome["small.png"], int) and isinstance(outcome["shard.tar::000.png"], int)
    # Mining's reader leaves the oversized member out; reads by name refuse it and the file.
    assert [n for n, _ in iter_tar(root, "shard.tar", MB)] == ["shard.tar::000.png"]
    with pytest.raises(FileNotFoundError):
        read_images(root, ["shard.tar::001.png"], MB)
    with pytest.raises(BadImage):
        read_images(root, ["huge.png"], MB)


def test_import_skips_and_counts_too_large_files(settings, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MICROSCOPE_MAX_IMAGE_MB", "1")
    get_settings.cache_clear()
    root = _dataset(tmp_path / "ds")
    with session_scope(settings.database_url) as s:
        ds, job = add_dataset(s, str(root), "capped")
        s.info.clear()  # run in-process, not through the broker
        ds_id, job_id = ds.id, job.id
    assert run_job(job_id, import_folder) == "succeeded"
    with session_scope(settings.database_url) as s:
        ds = s.get(Dataset, ds_id)
        assert ds is not None
        assert (ds.image_count, ds.skipped_count) == (2, 2)
        assert ds.skipped == {"too large": 2}
        job = s.get(Job, job_id)
        assert job is not None
        assert job.message == "2 images, 2 skipped (2 too large)"
