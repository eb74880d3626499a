"""Dataset-example images: receptive-field crops and activation heatmaps.

Every function takes the model-view image (the S x S resized and centre-cropped input the
model saw), so unit-map positions and receptive-field boxes map onto it directly.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

Box = tuple[int, int, int, int]  # (top, left, bottom, right), bottom/right exclusive

# Viridis at 11 evenly spaced stops (matplotlib's values), interpolated to 256 entries below;
# a tiny LUT keeps matplotlib out of the worker's dependencies.
_VIRIDIS_STOPS = np.array(
    [
        [0.267004, 0.004874, 0.329415],
        [0.282623, 0.140926, 0.457517],
        [0.253935, 0.265254, 0.529983],
        [0.206756, 0.371758, 0.553117],
        [0.163625, 0.471133, 0.558148],
        [0.127568, 0.566949, 0.550556],
        [0.134692, 0.658636, 0.517649],
        [0.266941, 0.748751, 0.440573],
        [0.477504, 0.821444, 0.318195],
        [0.741388, 0.873449, 0.149561],
        [0.993248, 0.906157, 0.143936],
    ]
)


def _viridis_lut() -> np.ndarray:
    """(256, 3) uint8 viridis colours."""
    t = np.linspace(0.0, 1.0, 256)
    stops = np.linspace(0.0, 1.0, len(_VIRIDIS_STOPS))
    rgb = np.stack([np.interp(t, stops, _VIRIDIS_STOPS[:, c]) for c in range(3)], axis=1)
    return np.round(rgb * 255).astype(np.uint8)


VIRIDIS = _viridis_lut()


def crop_example(img: Image.Image, box: Box, min_side: int = 0) -> Image.Image:
    """The box (top, left, bottom, right) of the model-view image, upscaled to ``min_side``."""
    top, left, bottom, right = box
    if not (0 <= top < bottom <= img.height and 0 <= left < right <= img.width):
        raise ValueError(f"box {box} is empty or outside the {img.width}x{img.height} image")
    crop = img.crop((left, top, right, bottom))
    short = min(crop.width, crop.height)
    if min_side and short < min_side:
        # Early layers have fields of a few pixels: enlarge with hard edges so pixels stay visible.
        scale = min_side / short
        size = (round(crop.width * scale), round(crop.height * scale))
        crop = crop.resize(size, Image.Resampling.NEAREST)
    return crop


VIRIDIS_PALETTE = VIRIDIS.flatten().tolist()


def colorize(values: Image.Image) -> Image.Image:
    """Viridis RGB for an 'F' image of values in [0, 1]: Pillow's palette lookup, in C (about
    7x faster than indexing the LUT with numpy; tens of thousands run per mining job)."""
    idx = values.point(lambda v: v * 255 + 0.5).convert("L")  # rounded, clipped to 0..255
    idx.putpalette(VIRIDIS_PALETTE)
    return idx.convert("RGB")


def heatmap_tile(
    tile: Image.Image,
    unit_map: torch.Tensor,
    box: Box,
    view_size: tuple[int, int],
    alpha: float = 0.5,
) -> Image.Image:
    """The unit's map (H, W) over the box of the model-view image (``view_size``: its width and
    height) in viridis, blended onto ``tile`` (the box's crop, at its display size), outlined.

    Drawn at the tile's size and only over the box: the map region is resampled straight to
    the tile (the same samples as upsampling the whole map to the view, then cropping), so no
    whole-view heatmap is coloured and blended per example. The colours span the map's range
    over the whole image."""
    if unit_map.dim() != 2:
        raise ValueError(f"expected an (H, W) unit map, got shape {tuple(unit_map.shape)}")
    m = unit_map.detach().to("cpu", torch.float32).numpy()  # (H, W)
    lo, hi = float(m.min()), float(m.max())
    norm = (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)  # (H, W) in [0, 1]
    top, left, bottom, right = box
    sx, sy = m.shape[1] / view_size[0], m.shape[0] / view_size[1]  # map cells per view pixel
    # Pillow's bilinear resize of a float image: one C call (thousands run per layer).
    up = Image.fromarray(norm.astype(np.float32)).resize(
        tile.size, Image.Resampling.BILINEAR, box=(left * sx, top * sy, right * sx, bottom * sy)
    )
    out = Image.blend(tile.convert("RGB"), colorize(up), alpha)
    ImageDraw.Draw(out).rectangle((0, 0, out.width - 1, out.height - 1), outline=(255, 255, 255))
    return out
