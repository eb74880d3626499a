"""Low-level descriptors: each word is highest on the image it names."""

from __future__ import annotations

import numpy as np
import pytest

from workers.ml.text.descriptors import (
    HUES,
    WORDS,
    base_maps,
    box_means,
    integral,
    measure,
    measure_boxes,
)

S = 48


def flat(rgb: tuple[float, float, float]) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, dtype=np.float64), (S, S, 3)).copy()


def grating(angle_deg: float, period: float = 6.0) -> np.ndarray:
    """Grey sinusoidal stripes: 0 vertical lines, 90 horizontal, 45 rising (/), -45 falling."""
    y, x = np.mgrid[0:S, 0:S].astype(np.float64)
    a = np.deg2rad(angle_deg)
    # The wave varies along the lines' normal, (cos a, sin a) with y pointing down.
    phase = (x * np.cos(a) + y * np.sin(a)) * 2 * np.pi / period
    g = 0.5 + 0.4 * np.sin(phase)
    return np.repeat(g[..., None], 3, axis=2)


@pytest.mark.parametrize(
    ("rgb", "word"),
    [
        ((0.9, 0.1, 0.1), "red"),
        ((0.9, 0.5, 0.1), "orange"),
        ((0.2, 0.8, 0.2), "green"),
        ((0.1, 0.2, 0.9), "blue"),
        ((0.9, 0.3, 0.7), "pink"),
    ],
)
def test_a_flat_colour_is_its_own_hue_word(rgb, word) -> None:
    m = measure(flat(rgb))
    assert max(HUES, key=lambda h: m[h]) == word
    assert m["colourful"] > 0.5 > m["black and white"]


def test_grey_is_black_and_white_and_has_no_hue() -> None:
    m = measure(flat((0.5, 0.5, 0.5)))
    assert all(m[h] == 0.0 for h in HUES)
    assert m["black and white"] == 0.0 == -m["colourful"]
    assert measure(flat((0.2, 0.2, 0.2)))["dark"] > m["dark"] > measure(flat((0.9,) * 3))["dark"]


@pytest.mark.parametrize(
    ("angle", "word"),
    [
        (0.0, "vertical edges"),
        (90.0, "horizontal edges"),
        (45.0, "rising diagonal edges"),
        (-45.0, "falling diagonal edges"),
    ],
)
def test_stripes_name_their_orientation(angle, word) -> None:
    m = measure(grating(angle))
    orientations = ["vertical edges", "horizontal edges", "rising diagonal edges"]
    orientations.append("falling diagonal edges")
    assert max(orientations, key=lambda w: m[w]) == word


def test_frequency_and_texture_words() -> None:
    rng = np.random.default_rng(0)
    noise = np.repeat(rng.uniform(0.2, 0.8, (S, S))[..., None], 3, axis=2)
    y, x = np.mgrid[0:S, 0:S] / S
    ramp = np.repeat((0.2 + 0.6 * x)[..., None], 3, axis=2)
    assert measure(noise)["fine detail"] > measure(ramp)["fine detail"]
    assert measure(ramp)["large shapes"] > measure(noise)["large shapes"]
    assert measure(ramp)["smooth"] > measure(noise)["smooth"]
    assert measure(noise)["edges"] > measure(ramp)["edges"]
    assert measure(grating(0))["stripes"] > measure(noise)["stripes"]
    # Dots: bright blobs on a dark ground; a checkerboard: saddles at every corner.
    blobs = 0.1 + 0.8 * np.exp(-(((x * S) % 12 - 6) ** 2 + ((y * S) % 12 - 6) ** 2) / 6.0)
    checks = 0.2 + 0.6 * (((x * S) // 6 + (y * S) // 6) % 2)
    dots, board = (measure(np.repeat(i[..., None], 3, axis=2)) for i in (blobs, checks))
    assert dots["dots"] > dots["checkerboard"] and board["checkerboard"] > board["dots"]


def test_box_means_equal_the_mean_over_the_crop() -> None:
    rng = np.random.default_rng(1)
    img = rng.uniform(0, 1, (S, S, 3))
    maps = base_maps(img)
    boxes = np.array([(0, 0, S, S), (3, 5, 20, 17), (-4, -4, 6, 6), (40, 30, 60, 60)])
    got = box_means(integral(maps), boxes)  # (B, M)
    for row, (t, lf, b, r) in zip(got, boxes, strict=True):
        t, lf = max(t, 0), max(lf, 0)
        want = maps[:, t:b, lf:r].mean(axis=(1, 2))
        np.testing.assert_allclose(row, want, rtol=1e-9, atol=1e-12)
    values = measure_boxes(img, boxes)
    assert values.shape == (4, len(WORDS))
    assert np.allclose(values[0], list(measure(img).values()))
