"""Images to model input, the way the model's own data config says (timm / CLIP conventions).

The one place an image is resized and cropped for a model: mining, the sheets drawn from it,
facet probes and text views all see exactly the pixels the model was fed (``model_view``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from workers.ml.models import PreprocessConfig


def scale_size(cfg: PreprocessConfig) -> int:
    """Length of the shorter side after resizing, before the center crop (timm's rule)."""
    return math.floor(cfg.input_size / cfg.crop_pct)


def _resized_dims(width: int, height: int, cfg: PreprocessConfig) -> tuple[int, int]:
    # Same arithmetic as torchvision's resize with an int size (long side truncated).
    short = scale_size(cfg)
    if width <= height:
        return short, int(short * height / width)
    return int(short * width / height), short


def _crop_offsets(rw: int, rh: int, size: int) -> tuple[int, int]:
    # torchvision.center_crop's rounding, so crop_box matches model_view to the pixel.
    return int(round((rw - size) / 2.0)), int(round((rh - size) / 2.0))


def model_view(img: Image.Image, cfg: PreprocessConfig) -> Image.Image:
    """The S x S RGB image the model sees: the shorter side resized to S / crop_pct with the
    model's interpolation, then the centre S x S (torchvision's Resize + CenterCrop)."""
    rgb = img if img.mode == "RGB" else img.convert("RGB")
    s = cfg.input_size
    rw, rh = _resized_dims(rgb.width, rgb.height, cfg)
    # Resizing the whole image and then cropping, not resizing a box: Pillow's box resize
    # samples other pixels (up to 25 levels apart on random images).
    resized = rgb.resize((rw, rh), Image.Resampling[cfg.interpolation.upper()])
    left, top = _crop_offsets(rw, rh, s)
    return resized.crop((left, top, left + s, top + s))


def from_pil(images: Sequence[Image.Image]) -> torch.Tensor:
    """8-bit RGB images of one size -> (N, 3, H, W) float32 in [0, 1]."""
    rgb = [im if im.mode == "RGB" else im.convert("RGB") for im in images]
    arr = np.stack([np.asarray(im, dtype=np.float32) / 255 for im in rgb])  # (N, H, W, 3)
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W)


def input_hw(cfg: PreprocessConfig) -> tuple[int, int]:
    """The model's input (H, W)."""
    return (cfg.input_size, cfg.input_size)


def normalize(x: torch.Tensor, cfg: PreprocessConfig) -> torch.Tensor:
    """The model's own normalisation of (N, 3, H, W) images in [0, 1]."""
    m = torch.as_tensor(cfg.mean, dtype=x.dtype, device=x.device)[None, :, None, None]  # (1,3,1,1)
    s = torch.as_tensor(cfg.std, dtype=x.dtype, device=x.device)[None, :, None, None]  # (1,3,1,1)
    return (x - m) / s


def to_batch(images: Sequence[Image.Image], cfg: PreprocessConfig) -> torch.Tensor:
    """Model input: each image's ``model_view``, normalised, (N, 3, S, S) float32."""
    if not images:
        return torch.empty(0, 3, cfg.input_size, cfg.input_size)
    return normalize(from_pil([model_view(im, cfg) for im in images]), cfg)


def crop_box(width: int, height: int, cfg: PreprocessConfig) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) in original pixels of the region ``model_view`` shows."""
    rw, rh = _resized_dims(width, height, cfg)
    left, top = _crop_offsets(rw, rh, cfg.input_size)
    sx, sy = width / rw, height / rh
    return (
        left * sx,
        top * sy,
        (left + cfg.input_size) * sx,
        (top + cfg.input_size) * sy,
    )
