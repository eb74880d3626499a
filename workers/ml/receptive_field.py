"""Receptive fields measured from the layer's own geometry by autograd.

The gradient of one output position with respect to the input is non-zero exactly on the
input pixels that position can see (for a generic input). Measuring it at two neighbouring
positions gives the size, the stride and the offset of the receptive field, with padding,
pooling and dilation all accounted for, without a per-architecture table.
"""

from __future__ import annotations

import copy
import weakref
from dataclasses import dataclass

import torch
from torch import nn

from contracts.layout import Layout
from workers.ml.hooks import run_to, to_unit_maps

Box = tuple[int, int, int, int]  # (top, left, bottom, right), bottom/right exclusive

# Random inputs per measured position: ReLU and max-pool zero the gradient of some pixels on
# any one input, but the union of the supports over a few random inputs is the full field.
_PROBES = 6


@dataclass(frozen=True)
class RF:
    """Receptive field of a unit-map position: input rows offset + y * stride ... + size."""

    size_y: int
    size_x: int
    stride_y: int
    stride_x: int
    offset_y: int
    offset_x: int

    def box(self, y: int, x: int, input_size: int) -> Box:
        """Input box (top, left, bottom, right) of unit-map position (y, x), clamped."""
        top = self.offset_y + y * self.stride_y
        left = self.offset_x + x * self.stride_x
        return (
            max(top, 0),
            max(left, 0),
            min(top + self.size_y, input_size),
            min(left + self.size_x, input_size),
        )


_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[tuple[str, Layout, int], RF]] = (
    weakref.WeakKeyDictionary()
)


def position_center(y: int, x: int, grid: tuple[int, int], input_size: int) -> tuple[int, int]:
    """Input pixel (row, col) at the centre of unit-map cell (y, x) on an evenly split image."""
    h, w = grid
    return int((y + 0.5) * input_size / h), int((x + 0.5) * input_size / w)


def token_rf(grid: tuple[int, int], input_size: int) -> RF:
    """Receptive field shown for a transformer token: its patch cell expanded x2 around it.

    Attention mixes every token with every other, so the gradient support of a token is the
    whole image and says nothing; the token's own patch is where its content comes from, and
    doubling the cell keeps a little context around it.
    """
    cell_y = max(input_size // grid[0], 1)
    cell_x = max(input_size // grid[1], 1)
    return RF(2 * cell_y, 2 * cell_x, cell_y, cell_x, -(cell_y // 2), -(cell_x // 2))


def _support(grad: torch.Tensor) -> Box:
    """(top, left, bottom, right) of the non-zero pixels of grad (B, C, S, S)."""
    mask = grad.abs().sum(dim=(0, 1)) > 0  # (S, S)
    rows = mask.any(dim=1).nonzero().flatten()
    cols = mask.any(dim=0).nonzero().flatten()
    if rows.numel() == 0:
        raise RuntimeError("output does not depend on the input")
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def _input(model: nn.Module, n: int, size: int, seed: int = 0) -> torch.Tensor:
    """Random inputs (n, 3, size, size) on the model's device and dtype."""
    param = next(model.parameters(), None)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=gen)
    if param is not None:
        x = x.to(param.device, param.dtype)
    return x


def _measure(
    model: nn.Module, module_path: str, layout: Layout, size: int, probes: int
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int], Box, Box]:
    """Grid, the two probed positions and their gradient supports at input ``size``."""
    # Half the batch probes p1, the other half p2: samples are independent in eval mode, so
    # one backward pass gives each sample its own gradient.
    x = _input(model, 2 * probes, size).requires_grad_(True)
    with torch.enable_grad():
        raw = run_to(model, x, [module_path], detach=False)[module_path]
        maps = to_unit_maps(raw, layout)  # (2B, U, H, W)
        h, w = maps.shape[2], maps.shape[3]
        p1 = ((h - 1) // 2, (w - 1) // 2)
        p2 = (min(p1[0] + 1, h - 1), min(p1[1] + 1, w - 1))
        # Channel sums: a position's field is the union over its units' fields.
        loss = maps[:probes, :, p1[0], p1[1]].sum() + maps[probes:, :, p2[0], p2[1]].sum()
        (grad,) = torch.autograd.grad(loss, x)  # (2B, 3, S, S)
    return (h, w), p1, p2, _support(grad[:probes]), _support(grad[probes:])


def _unclamped(box: Box, size: int) -> bool:
    return box[0] > 0 and box[1] > 0 and box[2] < size and box[3] < size


def _axis(lo1: int, hi1: int, lo2: int, pos1: int, pos2: int, cell: int) -> tuple[int, int, int]:
    """(size, stride, offset) along one axis from two supports of positions pos1 < pos2."""
    stride = (lo2 - lo1) // (pos2 - pos1) if pos2 > pos1 else cell
    return hi1 - lo1, stride, lo1 - pos1 * stride


def _free_offset(lo: int, hi: int, pos: int, size: int, stride: int, limit: int) -> int | None:
    """Offset read from whichever side of a clamped support is free, else None."""
    if lo > 0:
        return lo - pos * stride
    if hi < limit:
        return hi - size - pos * stride
    return None


def _grid(model: nn.Module, module_path: str, layout: Layout, size: int) -> tuple[int, int]:
    """Unit-map grid (H, W) of a layer at input ``size``."""
    with torch.inference_mode():
        raw = run_to(model, _input(model, 1, size), [module_path])[module_path]
        maps = to_unit_maps(raw, layout)  # (1, U, H, W)
    return maps.shape[2], maps.shape[3]


def compute_receptive_field(
    model: nn.Module, module_path: str, layout: Layout, input_size: int
) -> RF:
    """Measure the receptive field of a layer's unit-map positions (uncached)."""
    s = input_size
    if layout.kind == "nc":
        return RF(s, s, s, s, 0, 0)
    probe = model
    if model.training:
        # Batch statistics would couple the samples; measure on an eval-mode copy.
        probe = copy.deepcopy(model).eval()
    if layout.kind in ("nlc", "lnc"):
        return token_rf(_grid(probe, module_path, layout, s), s)

    grid, p1, p2, b1, b2 = _measure(probe, module_path, layout, s, _PROBES)
    cell = (max(s // grid[0], 1), max(s // grid[1], 1))
    if _unclamped(b1, s) and _unclamped(b2, s):
        sy, ty, oy = _axis(b1[0], b1[2], b2[0], p1[0], p2[0], cell[0])
        sx, tx, ox = _axis(b1[1], b1[3], b2[1], p1[1], p2[1], cell[1])
        return RF(sy, sx, ty, tx, oy, ox)

    # The field reaches the border at the real size: measure size and stride on an input twice
    # as large (convolutions take any size). A field that does not fit there either is over
    # twice the image and, centred inside it, every box is the whole image anyway.
    try:
        _, q1, q2, c1, c2 = _measure(probe, module_path, layout, 2 * s, max(_PROBES // 2, 1))
    except (RuntimeError, ValueError):  # a module needs the native size (a fixed-size head)
        return RF(2 * s, 2 * s, cell[0], cell[1], -s, -s)
    if not (_unclamped(c1, 2 * s) and _unclamped(c2, 2 * s)):
        return RF(2 * s, 2 * s, cell[0], cell[1], -s, -s)
    sy, ty, oy_big = _axis(c1[0], c1[2], c2[0], q1[0], q2[0], cell[0])
    sx, tx, ox_big = _axis(c1[1], c1[3], c2[1], q1[1], q2[1], cell[1])
    # Offsets from the real size where one side is free: same-padding can shift by a pixel
    # with the input size.
    oy_free = _free_offset(b1[0], b1[2], p1[0], sy, ty, s)
    ox_free = _free_offset(b1[1], b1[3], p1[1], sx, tx, s)
    return RF(
        sy,
        sx,
        ty,
        tx,
        oy_big if oy_free is None else oy_free,
        ox_big if ox_free is None else ox_free,
    )


def receptive_field(model: nn.Module, module_path: str, layout: Layout, input_size: int) -> RF:
    """Receptive field of a layer's positions, measured once per (model, layer, size)."""
    per_model = _CACHE.setdefault(model, {})
    key = (module_path, layout, input_size)
    if key not in per_model:
        per_model[key] = compute_receptive_field(model, module_path, layout, input_size)
    return per_model[key]
