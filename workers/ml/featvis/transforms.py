"""Robustness transforms (Lucid's pad, jitter, scale, rotate, jitter) fused into one warp, and
the helpers that move images and models in and out of the optimisation (tensors to PIL, a
frozen model).

Lucid applies each transform as its own resampling and then upsamples to the model's input.
Every one of them is affine, so here they compose into one 2x3 matrix per batch element and a
single ``grid_sample`` produces the model-sized input: one interpolation instead of four, and
no separate upsampling pass. Each element draws its transform from its own generator, so an
element's trajectory does not depend on which batch it is in.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn


def _lucid_scales() -> tuple[float, ...]:
    return tuple(1 + (i - 5) / 50 for i in range(11))


def _lucid_angles() -> tuple[float, ...]:
    # Lucid weights "no rotation" six times as often as any other angle.
    return tuple(float(a) for a in [*range(-10, 11), *([0] * 5)])


@dataclass(frozen=True)
class TransformConfig:
    """Lucid's standard transforms; pixel amounts are at ``ref_size`` and scale with the image."""

    pad: float = 12
    jitter: int = 8
    scales: tuple[float, ...] = field(default_factory=_lucid_scales)
    angles: tuple[float, ...] = field(default_factory=_lucid_angles)
    jitter2: int = 4
    ref_size: int = 128
    fill: float = 0.5

    def as_dict(self) -> dict[str, object]:
        """Plain values, for the parameters stored beside a render."""
        d = asdict(self)
        d["scales"] = list(self.scales)
        d["angles"] = list(self.angles)
        return d


def _shift(rng: np.random.Generator, d: int) -> float:
    # Integer shift centred on zero (Lucid's random crop of d pixels moves the centre by +-d/2).
    return float(rng.integers(0, d) - d // 2) if d > 1 else 0.0


def sample_theta(
    rngs: Sequence[np.random.Generator], cfg: TransformConfig, size: int
) -> torch.Tensor:
    """One affine matrix per element (``affine_grid`` convention), shape (N, 2, 3)."""
    px = size / cfg.ref_size  # transform pixels are given at ref_size
    half = size / 2
    canvas = size + 2 * cfg.pad * px  # the padded image fills the model input
    thetas = np.empty((len(rngs), 2, 3), dtype=np.float64)
    for i, rng in enumerate(rngs):
        t1 = np.array([_shift(rng, cfg.jitter), _shift(rng, cfg.jitter)]) * px
        s = float(rng.choice(cfg.scales))
        a = math.radians(float(rng.choice(cfg.angles)))
        t2 = np.array([_shift(rng, cfg.jitter2), _shift(rng, cfg.jitter2)]) * px
        # Forward: q = R(s (p + t1)) + t2 (pixels about the centre); the grid needs the inverse,
        # p = R^-1 (q - t2) / s - t1, with q = u * canvas/2 and p = v * size/2 (u, v in [-1, 1]).
        r_inv = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
        thetas[i, :, :2] = r_inv * (canvas / 2) / (s * half)
        thetas[i, :, 2] = (-(r_inv @ t2) / s - t1) / half
    return torch.from_numpy(thetas).float()  # (N, 2, 3)


def warp(
    images: torch.Tensor, theta: torch.Tensor, out_hw: tuple[int, int], fill: float = 0.5
) -> torch.Tensor:
    """Resample (N, 3, S, S) images through ``theta`` to (N, 3, H, W); outside is ``fill``."""
    n, c = images.shape[:2]
    grid = F.affine_grid(theta, [n, c, *out_hw], align_corners=False)  # (N, H, W, 2)
    # grid_sample pads with zeros; shifting by fill makes the padding the constant fill value.
    out = F.grid_sample(images - fill, grid, mode="bilinear", align_corners=False)  # (N,3,H,W)
    return out + fill


def resize_to(images: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    """Resize (N, 3, h, w) images to ``out_hw`` with bilinear sampling, only if needed."""
    if tuple(images.shape[-2:]) == tuple(out_hw):
        return images
    down = images.shape[-1] > out_hw[1] or images.shape[-2] > out_hw[0]
    return F.interpolate(
        images, size=out_hw, mode="bilinear", align_corners=False, antialias=down
    )  # (N, 3, H, W)


@contextmanager
def frozen(model: nn.Module, channels_last: bool = False) -> Iterator[nn.Module]:
    """Eval mode, no parameter gradients (and optionally channels-last weights) for the duration.

    The model's previous mode, flags and weight storage all come back on exit.
    """
    was_training = model.training
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    tensors = [*params, *model.buffers()]
    storage = [t.data for t in tensors]
    try:
        model.eval()
        for p in params:
            # Only the image needs gradients: skipping weight gradients saves backward work.
            p.requires_grad_(False)
        if channels_last:
            # oneDNN convolutions run faster on NHWC: measured 10-13% less per step on the CPU.
            for t in tensors:
                if t.dim() == 4:
                    t.data = t.data.contiguous(memory_format=torch.channels_last)
        yield model
    finally:
        for t, d in zip(tensors, storage, strict=True):
            t.data = d
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
        model.train(was_training)


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(N, 3, H, W) in [0, 1] -> 8-bit RGB images."""
    arr = (images.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()  # NHWC
    return [Image.fromarray(a) for a in arr]
