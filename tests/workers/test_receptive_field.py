"""Receptive fields by autograd against analytic values; crops and heatmaps built on them."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from contracts.layout import Layout
from workers.ml.images import webp_bytes
from workers.ml.mining import LayerReducer
from workers.ml.receptive_field import (
    RF,
    compute_receptive_field,
    position_center,
    receptive_field,
    token_rf,
)
from workers.ml.render import VIRIDIS, colorize, crop_example, heatmap_tile

NCHW = Layout("nchw")


class ToTokens(nn.Module):
    """(N, C, H, W) -> (N, H * W, C): a patch embedding's token output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).transpose(1, 2)


def conv_stack() -> nn.Module:
    # Two 3x3 stride-1 convs then a 3x3 stride-2 conv, padding 1: size 7, stride 2, offset -3.
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, stride=2, padding=1),
        nn.ReLU(),
    ).eval()


def pool_stack() -> nn.Module:
    # conv3 -> maxpool 2 -> conv3: output p sees input rows 2p - 3 .. 2p + 4 (size 8).
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, padding=1),
    ).eval()


@pytest.mark.parametrize(
    ("model", "path", "expected"),
    [
        (conv_stack(), "4", RF(7, 7, 2, 2, -3, -3)),
        (conv_stack(), "5", RF(7, 7, 2, 2, -3, -3)),  # the ReLU after it: same field
        (conv_stack(), "2", RF(5, 5, 1, 1, -2, -2)),
        (pool_stack(), "3", RF(8, 8, 2, 2, -3, -3)),
        (
            nn.Sequential(nn.Conv2d(3, 2, (3, 5), stride=(1, 2), padding=(1, 2))).eval(),
            "0",
            RF(3, 5, 1, 2, -1, -2),
        ),
        (
            nn.Sequential(nn.Conv2d(3, 2, 3, padding=2, dilation=2)).eval(),
            "0",
            RF(5, 5, 1, 1, -2, -2),
        ),
    ],
)
def test_receptive_field_equals_analytic(model, path, expected):
    assert compute_receptive_field(model, path, NCHW, 32) == expected


def test_field_wider_than_the_input_is_measured_on_a_larger_one():
    torch.manual_seed(0)
    deep = nn.Sequential(*[nn.Conv2d(3, 3, 3, padding=1) for _ in range(6)]).eval()  # size 13
    assert compute_receptive_field(deep, "5", NCHW, 8) == RF(13, 13, 1, 1, -6, -6)


def test_field_wider_than_twice_the_input_boxes_the_whole_image():
    torch.manual_seed(0)
    deep = nn.Sequential(*[nn.Conv2d(3, 3, 3, padding=1) for _ in range(10)]).eval()  # size 21
    rf = compute_receptive_field(deep, "9", NCHW, 8)
    assert all(rf.box(y, x, 8) == (0, 0, 8, 8) for y in range(8) for x in range(8))


def test_training_mode_model_is_left_untouched():
    model = conv_stack().train()
    assert compute_receptive_field(model, "4", NCHW, 32) == RF(7, 7, 2, 2, -3, -3)
    assert model.training


def test_token_layout_uses_the_patch_cell_doubled():
    model = nn.Sequential(nn.Conv2d(3, 8, 4, stride=4), ToTokens()).eval()  # 8 x 8 tokens
    rf = compute_receptive_field(model, "1", Layout("nlc"), 32)
    assert rf == token_rf((8, 8), 32) == RF(8, 8, 4, 4, -2, -2)
    assert rf.box(0, 0, 32) == (0, 0, 6, 6)
    assert rf.box(3, 5, 32) == (10, 18, 18, 26)  # the 4-px patch at (12, 20) plus 2 px around


def test_receptive_field_is_cached_per_model_and_layer():
    model = conv_stack()
    calls = []
    handle = model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        first = receptive_field(model, "4", NCHW, 32)
        n = len(calls)
        assert receptive_field(model, "4", NCHW, 32) is first
        assert len(calls) == n > 0
        receptive_field(model, "2", NCHW, 32)
        assert len(calls) > n
    finally:
        handle.remove()


def test_boxes_are_clamped_and_contain_their_position():
    rf = RF(7, 7, 2, 2, -3, -3)
    assert rf.box(0, 0, 32) == (0, 0, 4, 4)
    assert rf.box(15, 15, 32) == (27, 27, 32, 32)
    assert rf.box(5, 6, 32) == (7, 9, 14, 16)
    for y in range(16):
        for x in range(16):
            top, left, bottom, right = rf.box(y, x, 32)
            cy, cx = position_center(y, x, (16, 16), 32)
            assert top <= cy < bottom
            assert left <= cx < right


def test_timm_layers_boxes_contain_their_positions():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0).eval()
    size = 64
    for path, grid in (("conv_stem", 32), ("blocks.1", 16), ("blocks.2", 8)):
        rf = receptive_field(model, path, NCHW, size)
        assert rf.stride_y == rf.stride_x == size // grid
        assert rf.size_y > rf.stride_y
        for y in range(grid):
            for x in range(grid):
                top, left, bottom, right = rf.box(y, x, size)
                cy, cx = position_center(y, x, (grid, grid), size)
                assert top <= cy < bottom
                assert left <= cx < right


def test_mined_crops_contain_their_argmax():
    model = conv_stack()
    size = 32
    gen = torch.Generator().manual_seed(3)
    images = torch.rand(6, 3, size, size, generator=gen)  # (N, 3, S, S) in [0, 1]
    with torch.inference_mode():
        maps = model[:5](images)  # (N, 4, 16, 16)
    red = LayerReducer(k=3, sketch_size=8)
    red.update(maps, torch.arange(6))
    res = red.finalize()
    rf = receptive_field(model, "4", NCHW, size)
    for unit in range(4):
        for j in range(3):
            i, y, x = (int(t[unit, j]) for t in (res.top_ids, res.top_y, res.top_x))
            assert float(maps[i, unit, y, x]) == float(res.top_scores[unit, j])
            box = rf.box(y, x, size)
            cy, cx = position_center(y, x, res.grid, size)
            assert box[0] <= cy < box[2]
            assert box[1] <= cx < box[3]
            arr = (images[i].permute(1, 2, 0).numpy() * 255).astype(np.uint8)  # (S, S, 3)
            crop = crop_example(Image.fromarray(arr), box)
            np.testing.assert_array_equal(np.asarray(crop), arr[box[0] : box[2], box[1] : box[3]])


def test_crop_rejects_empty_box_and_upscales_small_ones():
    img = Image.new("RGB", (32, 32), (10, 20, 30))
    assert crop_example(img, (4, 4, 11, 9), min_side=50).size == (50, 70)
    with pytest.raises(ValueError, match="empty or outside"):
        crop_example(img, (4, 4, 4, 9))
    with pytest.raises(ValueError, match="empty or outside"):
        crop_example(img, (0, 0, 40, 9))


def test_heatmap_tile_maps_low_and_high_to_the_lut_ends():
    black = Image.new("RGB", (32, 32), (0, 0, 0))
    unit_map = torch.zeros(4, 4)
    unit_map[3, 3] = 5.0
    whole = (0, 0, 32, 32)
    heat = heatmap_tile(black, unit_map, whole, (32, 32), alpha=1.0)
    arr = np.asarray(heat)
    assert heat.size == (32, 32)
    assert tuple(arr[0, 0]) == tuple(arr[31, 5]) == (255, 255, 255)  # the outline
    np.testing.assert_array_equal(arr[1, 1], VIRIDIS[0])
    np.testing.assert_array_equal(arr[30, 30], VIRIDIS[255])
    half = np.asarray(heatmap_tile(black, unit_map, whole, (32, 32), alpha=0.5))
    assert abs(int(half[30, 30, 1]) - int(VIRIDIS[255, 1]) // 2) <= 1
    # A box's tile, at another size, samples the map where the whole view's heatmap would.
    box = (16, 8, 32, 24)  # the view's lower middle: rows 16-31, columns 8-23
    full = np.asarray(heatmap_tile(black, unit_map, whole, (32, 32), alpha=1.0))
    part = np.asarray(heatmap_tile(Image.new("RGB", (16, 16)), unit_map, box, (32, 32), 1.0))
    np.testing.assert_array_equal(part[1:-1, 1:-1], full[17:31, 9:23])


def test_webp_bytes_round_trip():
    img = Image.new("RGB", (40, 24), (200, 30, 30))
    data = webp_bytes(img, quality=80)
    assert data[:4] == b"RIFF"
    assert data[8:12] == b"WEBP"
    back = Image.open(io.BytesIO(data))
    assert back.size == (40, 24)


def test_colorize_is_the_viridis_lut_of_rounded_values():
    rng = np.random.default_rng(0)
    values = rng.random((40, 50)).astype(np.float32)  # (H, W) in [0, 1)
    values[0, :3] = (0.0, 1.0, 0.5 / 255)
    out = np.asarray(colorize(Image.fromarray(values)))  # (H, W, 3)
    expected = VIRIDIS[np.floor(values * 255 + 0.5).astype(np.int64)]  # round half up
    np.testing.assert_array_equal(out, expected)
