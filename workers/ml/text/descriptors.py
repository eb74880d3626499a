"""Low-level descriptors measured on image crops: colour, orientation, spatial frequency, texture.

Early and middle units respond to what a few pixels show, not to objects, so they are described
by words whose match to an image can be measured from the pixels alone: "how well does
descriptor d match crop x" is a number, computed here with numpy and scipy (no model).

Every descriptor is a function of the means, over the crop, of a few per-pixel maps (luminance,
opponent colour, chroma, oriented gradient energy, band-pass energy, Hessian blob and saddle
responses). The maps are computed once per image and summed over any box through an integral
image, so the crops of thousands of units cost one lookup each (``measure_boxes``); ``measure``
is the same measurement on one crop on its own.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

Box = tuple[int, int, int, int]  # (top, left, bottom, right), bottom/right exclusive

# Hue words: their direction (degrees) in the opponent-colour plane (a, b) below, where red is
# 0, yellow 60, green 120, cyan 180, blue 240 and magenta 300 (the HSV hue circle).
HUES: dict[str, float] = {
    "red": 0.0,
    "orange": 30.0,
    "yellow": 60.0,
    "green": 120.0,
    "cyan": 180.0,
    "blue": 240.0,
    "purple": 270.0,
    "pink": 330.0,
}
EPS = 1e-6
GRAD_SIGMA = 1.0  # Gaussian-derivative scale of the edge maps, in input pixels
FINE_BAND = (0.5, 1.5)  # difference-of-Gaussians band of "fine detail"
COARSE_BAND = (3.0, 8.0)  # and of large shapes
BLOB_SIGMA = 2.0  # Hessian scale of dots and checkerboards

# Per-pixel maps, in order (their box means are what descriptors are made of).
_MAPS = (
    "lum",
    "lum2",
    "chroma",
    "opp_a",
    "opp_b",
    "grad",
    "vertical",
    "horizontal",
    "rising",
    "falling",
    "fine",
    "coarse",
    "blob",
    "saddle",
    "gxx",
    "gyy",
    "gxy",
)
M = {name: i for i, name in enumerate(_MAPS)}

# The vocabulary: word -> what it describes. Opposites are both present (a unit may prefer
# either end of a scale).
KINDS: dict[str, str] = {
    **{h: "colour" for h in HUES},
    "colourful": "colour",
    "black and white": "colour",
    "bright": "tone",
    "dark": "tone",
    "high contrast": "tone",
    "edges": "texture",
    "smooth": "texture",
    "vertical edges": "orientation",
    "horizontal edges": "orientation",
    "rising diagonal edges": "orientation",
    "falling diagonal edges": "orientation",
    "fine detail": "frequency",
    "large shapes": "frequency",
    "stripes": "texture",
    "dots": "texture",
    "checkerboard": "texture",
}
WORDS: tuple[str, ...] = tuple(KINDS)


def base_maps(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB in [0, 1] -> (M, H, W) float64 per-pixel maps (``_MAPS`` order)."""
    x = np.clip(np.asarray(rgb, dtype=np.float64), 0.0, 1.0)  # (H, W, 3)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    lum = 0.299 * r + 0.587 * g + 0.114 * b  # (H, W)
    chroma = x.max(-1) - x.min(-1)  # (H, W) 0 for greys, 1 for a pure hue
    # Opponent-colour coordinates: a hue word's measure is the colour's projection on its
    # direction, graded and signed (what a linear colour unit computes), not a hue window.
    opp_a = r - 0.5 * (g + b)
    opp_b = (np.sqrt(3.0) / 2.0) * (g - b)
    gx = ndimage.gaussian_filter(lum, GRAD_SIGMA, order=(0, 1))  # d/dx (columns)
    gy = ndimage.gaussian_filter(lum, GRAD_SIGMA, order=(1, 0))  # d/dy (rows, downwards)
    gxx, gyy, gxy = gx * gx, gy * gy, gx * gy
    # Oriented energy beyond the orthogonal direction. An edge line's gradient is normal to it:
    # a vertical edge has a horizontal gradient; a rising (/) edge has gx * gy > 0 (y down).
    vertical = np.maximum(gxx - gyy, 0.0)
    horizontal = np.maximum(gyy - gxx, 0.0)
    rising = np.maximum(2.0 * gxy, 0.0)
    falling = np.maximum(-2.0 * gxy, 0.0)

    def band(lo_s: float, hi_s: float) -> np.ndarray:
        dog = ndimage.gaussian_filter(lum, lo_s) - ndimage.gaussian_filter(lum, hi_s)
        return dog * dog

    s2 = BLOB_SIGMA**2  # scale-normalised second derivatives
    hxx = s2 * ndimage.gaussian_filter(lum, BLOB_SIGMA, order=(0, 2))
    hyy = s2 * ndimage.gaussian_filter(lum, BLOB_SIGMA, order=(2, 0))
    hxy = s2 * ndimage.gaussian_filter(lum, BLOB_SIGMA, order=(1, 1))
    det = hxx * hyy - hxy * hxy  # > 0 at blobs (dots), < 0 at saddles (checkerboard corners)
    maps = [
        lum,
        lum * lum,
        chroma,
        opp_a,
        opp_b,
        gxx + gyy,
        vertical,
        horizontal,
        rising,
        falling,
        band(*FINE_BAND),
        band(*COARSE_BAND),
        np.maximum(det, 0.0),
        np.maximum(-det, 0.0),
        gxx,
        gyy,
        gxy,
    ]
    return np.stack(maps)  # (M, H, W)


def integral(maps: np.ndarray) -> np.ndarray:
    """(M, H, W) -> (M, H + 1, W + 1) summed-area tables (a zero row and column first)."""
    m, h, w = maps.shape
    out = np.zeros((m, h + 1, w + 1), dtype=np.float64)
    out[:, 1:, 1:] = maps.cumsum(1).cumsum(2)
    return out


def box_means(table: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Mean of every map over each box: table (M, H + 1, W + 1), boxes (B, 4) -> (B, M).

    Boxes are clamped to the image; an empty one averages nothing and gives zeros."""
    h, w = table.shape[1] - 1, table.shape[2] - 1
    b = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    t, lf = np.clip(b[:, 0], 0, h), np.clip(b[:, 1], 0, w)
    bt, r = np.clip(b[:, 2], 0, h), np.clip(b[:, 3], 0, w)
    sums = table[:, bt, r] - table[:, t, r] - table[:, bt, lf] + table[:, t, lf]  # (M, B)
    area = np.maximum((bt - t) * (r - lf), 1)  # (B,)
    return (sums / area).T  # (B, M)


def describe(means: np.ndarray) -> np.ndarray:
    """Box means (B, M) -> descriptor values (B, D), columns in ``WORDS`` order."""
    m = np.asarray(means, dtype=np.float64)

    def col(name: str) -> np.ndarray:
        return m[:, M[name]]

    lum_std = np.sqrt(np.maximum(col("lum2") - col("lum") ** 2, 0.0))
    log_ratio = np.log(col("fine") + EPS) - np.log(col("coarse") + EPS)
    gxx, gyy, gxy = col("gxx"), col("gyy"), col("gxy")
    # Coherence of the crop's structure tensor: 1 when all its gradients share one direction.
    coherence = np.sqrt((gxx - gyy) ** 2 + 4.0 * gxy**2) / (gxx + gyy + EPS)
    a, b = col("opp_a"), col("opp_b")
    values = {
        **{h: a * np.cos(np.deg2rad(t)) + b * np.sin(np.deg2rad(t)) for h, t in HUES.items()},
        "colourful": col("chroma"),
        "black and white": -col("chroma"),
        "bright": col("lum"),
        "dark": -col("lum"),
        "high contrast": lum_std,
        "edges": col("grad"),
        "smooth": -col("grad"),
        "vertical edges": col("vertical"),
        "horizontal edges": col("horizontal"),
        "rising diagonal edges": col("rising"),
        "falling diagonal edges": col("falling"),
        "fine detail": log_ratio,
        "large shapes": -log_ratio,
        "stripes": coherence * col("fine"),
        "dots": col("blob"),
        "checkerboard": col("saddle"),
    }
    return np.stack([values[w] for w in WORDS], axis=1)  # (B, D)


def measure_boxes(rgb: np.ndarray, boxes: Sequence[Box] | np.ndarray) -> np.ndarray:
    """Every descriptor on each box of one image: rgb (H, W, 3) in [0, 1] -> (B, D).

    The per-pixel maps see the whole image (a crop's border pixels keep their context)."""
    return describe(box_means(integral(base_maps(rgb)), np.asarray(boxes)))


def measure(crop: np.ndarray) -> dict[str, float]:
    """How well each descriptor word matches one crop (H, W, 3) in [0, 1]."""
    h, w = crop.shape[:2]
    values = measure_boxes(crop, [(0, 0, h, w)])[0]  # (D,)
    return {word: float(v) for word, v in zip(WORDS, values, strict=True)}
