"""The demo dataset built from photographs shipped in installed packages."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from workers.ml import demo_data
from workers.ml.demo_data import DemoDataError, assemble_demo_dataset, is_photo_stamp

needs_debian = pytest.mark.skipif(
    not all(p.exists() for p in demo_data.DEBIAN_PACKAGES.values()),
    reason="Debian photo packages not installed",
)


@needs_debian
def test_assembles_300_photos_deterministically_and_idempotently(tmp_path):
    calls: list[tuple[int, int]] = []
    first = assemble_demo_dataset(tmp_path / "a", progress=lambda i, n: calls.append((i, n)))
    assert len(first.images) >= 300
    assert sum(first.sources.values()) == len(first.images)
    assert set(first.sources) == {"skimage", "sklearn", "tuxpaint", "plasma", "mate"}
    assert calls[-1][0] == calls[-1][1]
    assert all(p.suffix == ".jpg" and p.name.split("-")[0] in first.sources for p in first.images)
    with Image.open(first.images[0]) as img:
        assert img.mode == "RGB"

    mtimes = {p: p.stat().st_mtime_ns for p in first.images}
    again = assemble_demo_dataset(tmp_path / "a", progress=lambda i, n: calls.append((i, n)))
    assert again.checksum == first.checksum
    assert {p: p.stat().st_mtime_ns for p in again.images} == mtimes
    assert len(calls) == len(first.images)  # the second run did no work

    elsewhere = assemble_demo_dataset(tmp_path / "b")
    assert elsewhere.checksum == first.checksum


@pytest.mark.slow
@needs_debian
def test_damaged_or_missing_output_is_rebuilt(tmp_path):
    first = assemble_demo_dataset(tmp_path)
    first.images[3].write_bytes(b"damaged")
    first.images[5].unlink()
    again = assemble_demo_dataset(tmp_path)
    assert again.checksum == first.checksum
    assert first.images[5].exists()


def test_too_few_photos_names_the_packages(tmp_path, monkeypatch):
    absent = tmp_path / "absent"
    monkeypatch.setattr(demo_data, "TUXPAINT_STAMPS", absent)
    monkeypatch.setattr(demo_data, "PLASMA_WALLPAPERS", absent)
    monkeypatch.setattr(demo_data, "MATE_NATURE", absent)
    monkeypatch.setattr(
        demo_data,
        "DEBIAN_PACKAGES",
        {"tuxpaint-stamps-default": absent, "plasma-workspace-wallpapers": absent},
    )
    with pytest.raises(DemoDataError, match="apt-get install tuxpaint-stamps-default"):
        assemble_demo_dataset(tmp_path / "out")


def test_photo_stamp_filter(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 255, (80, 80, 3), dtype=np.uint8))
    photo.save(tmp_path / "photo.png")
    Image.new("RGBA", (80, 80), (255, 0, 0, 255)).save(tmp_path / "flat.png")
    Image.new("LA", (80, 80), (0, 255)).save(tmp_path / "glyph.png")
    assert is_photo_stamp(tmp_path / "photo.png")
    assert not is_photo_stamp(tmp_path / "flat.png")
    assert not is_photo_stamp(tmp_path / "glyph.png")
    photo.save(tmp_path / "vector.png")
    (tmp_path / "vector.svg").write_text("<svg/>")
    assert not is_photo_stamp(Path(tmp_path / "vector.png"))
