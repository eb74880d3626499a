"""Image decoding: every mode to correct RGB, and every kind of bad file as BadImage."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from workers.ml.images import (
    ALPHA_BACKGROUND,
    BadImage,
    list_images,
    load_rgb,
    thumbnail_jpeg,
    webp_bytes,
)


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _pixel(data: bytes) -> tuple[int, int, int]:
    out = load_rgb(data)
    assert out.mode == "RGB"
    return out.getpixel((0, 0))


def test_sixteen_bit_gray_scales_to_full_range():
    for value, expected in [(65535, 255), (0, 0), (32896, 128)]:
        img = Image.fromarray(np.full((4, 4), value, dtype=np.uint16))  # I;16
        assert _pixel(_encode(img, "PNG")) == (expected,) * 3


def test_32bit_int_and_float_modes():
    img = Image.fromarray(np.full((4, 4), 65535, dtype=np.int32), mode="I")
    assert _pixel(_encode(img, "TIFF")) == (255, 255, 255)
    f = Image.fromarray(np.array([[0.0, 1.0]], dtype=np.float32), mode="F")
    out = load_rgb(_encode(f, "TIFF"))
    assert out.getpixel((0, 0)) == (0, 0, 0)
    assert out.getpixel((1, 0)) == (255, 255, 255)


def test_gray_bilevel_and_palette():
    assert _pixel(_encode(Image.new("L", (3, 3), 77), "PNG")) == (77, 77, 77)
    assert _pixel(_encode(Image.new("1", (3, 3), 1), "PNG")) == (255, 255, 255)
    pal = Image.new("RGB", (3, 3), (200, 10, 20)).convert("P", palette=Image.Palette.ADAPTIVE)
    assert _pixel(_encode(pal, "PNG")) == (200, 10, 20)


def test_transparency_composites_onto_gray():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    rgba.putpixel((1, 1), (255, 0, 0, 255))
    out = load_rgb(_encode(rgba, "PNG"))
    assert out.getpixel((0, 0)) == ALPHA_BACKGROUND
    assert out.getpixel((1, 1)) == (255, 0, 0)
    la = Image.new("LA", (2, 2), (255, 0))
    assert _pixel(_encode(la, "PNG")) == ALPHA_BACKGROUND
    pal = Image.new("P", (2, 2), 0)
    pal.putpalette([10, 20, 30] + [0, 0, 0] * 255)
    assert _pixel(_encode(pal, "PNG", transparency=0)) == ALPHA_BACKGROUND


def test_cmyk_jpeg():
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red ink
    r, g, b = _pixel(_encode(cmyk, "JPEG", quality=100))
    assert r > 240 and g < 15 and b < 15


def test_animated_gif_gives_first_frame():
    frames = [Image.new("RGB", (4, 4), c) for c in [(255, 0, 0), (0, 0, 255)]]
    data = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    r, g, b = _pixel(data)
    assert r > 240 and b < 15


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"plain text, no pixels here" * 4, "not an image"),
    ],
)
def test_non_images(data, reason):
    with pytest.raises(BadImage) as err:
        load_rgb(data)
    assert err.value.reason == reason


def test_truncated_and_corrupt(coffee):
    jpeg = _encode(coffee, "JPEG")
    with pytest.raises(BadImage) as err:
        load_rgb(jpeg[: len(jpeg) // 2])
    assert err.value.reason == "truncated"
    png = _encode(coffee, "PNG")
    broken = png[:100] + b"xx" + png[102:]  # a damaged deflate stream
    with pytest.raises(BadImage) as err:
        load_rgb(broken)
    assert err.value.reason == "corrupt"


def test_decompression_bomb_is_refused_before_decoding():
    big = _encode(Image.new("L", (2000, 2000)), "PNG")  # small file, 4 M pixels
    with pytest.raises(BadImage) as err:
        load_rgb(big, max_pixels=1_000_000)
    assert err.value.reason == "decompression bomb"


def test_list_images_is_sorted_and_recursive(tmp_path):
    (tmp_path / "b").mkdir()
    for rel in ["b/z.PNG", "a.jpg", "b/a.webp", "notes.txt", ".hidden.jpg"]:
        (tmp_path / rel).write_bytes(b"x")
    found = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert found == ["a.jpg", "b/a.webp", "b/z.PNG"]


def test_thumbnail_and_webp(coffee):
    thumb = Image.open(io.BytesIO(thumbnail_jpeg(coffee, max_side=64)))
    assert thumb.format == "JPEG"
    assert max(thumb.size) == 64
    webp = Image.open(io.BytesIO(webp_bytes(coffee)))
    assert webp.format == "WEBP"
    assert webp.size == coffee.size
