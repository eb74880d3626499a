"""Images to model input, the way the model's own data config says (timm / CLIP conventions)."""

from __future__ import annotations

import math

import torch
import torchvision.transforms.functional as TF
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
    # torchvision.center_crop's rounding, so crop_box matches to_batch to the pixel.
    return int(round((rw - size) / 2.0)), int(round((rh - size) / 2.0))


def to_batch(images: list[Image.Image], cfg: PreprocessConfig) -> torch.Tensor:
    """Resize shorter side to S/crop_pct, center-crop S, normalise: (N, 3, S, S) float32."""
    s = cfg.input_size
    mean = torch.tensor(cfg.mean, dtype=torch.float32)[:, None, None]  # (3, 1, 1)
    std = torch.tensor(cfg.std, dtype=torch.float32)[:, None, None]  # (3, 1, 1)
    out = []
    for img in images:
        rgb = img if img.mode == "RGB" else img.convert("RGB")
        rw, rh = _resized_dims(rgb.width, rgb.height, cfg)
        resized = rgb.resize((rw, rh), Image.Resampling[cfg.interpolation.upper()])
        left, top = _crop_offsets(rw, rh, s)
        cropped = resized.crop((left, top, left + s, top + s))
        x = TF.pil_to_tensor(cropped).float().div_(255.0)  # (3, S, S) in [0, 1]
        out.append((x - mean) / std)  # (3, S, S)
    if not out:
        return torch.empty(0, 3, s, s)
    return torch.stack(out)  # (N, 3, S, S)


def crop_box(width: int, height: int, cfg: PreprocessConfig) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) in original pixels of the region the model sees."""
    rw, rh = _resized_dims(width, height, cfg)
    left, top = _crop_offsets(rw, rh, cfg.input_size)
    sx, sy = width / rw, height / rh
    return (
        left * sx,
        top * sy,
        (left + cfg.input_size) * sx,
        (top + cfg.input_size) * sy,
    )
