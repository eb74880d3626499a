"""Weight views on convolutions whose weights are known: NMF-RGB, SVD placement, and which
kernel makes a layer's units."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from workers.ml.weights import (
    NoWeights,
    conv_order,
    nmf_rgb,
    rgb_image,
    svd_placement,
    unit_weights,
)

# Three patterns, each a spatial map (3x3, non-negative) times an input-channel loading with
# positive and negative weights, on disjoint channels.
SPATIAL = [
    np.array([[1, 1, 1], [0, 0, 0], [0, 0, 0]], dtype=np.float32),  # top row
    np.array([[0, 0, 1], [0, 0, 1], [0, 0, 1]], dtype=np.float32),  # right column
    np.array([[0, 0, 0], [0, 1, 0], [0, 0, 0]], dtype=np.float32),  # centre
]
LOADINGS = [
    np.array([1, 0.5, 0, 0, 0, 0], dtype=np.float32),
    np.array([0, 0, 1, -1, 0, 0], dtype=np.float32),
    np.array([0, 0, 0, 0, -1, 0.7], dtype=np.float32),
]


def pattern(k: int, amp: float) -> np.ndarray:
    return amp * LOADINGS[k][:, None, None] * SPATIAL[k][None]  # (C_in, 3, 3)


def synthetic_layer() -> tuple[np.ndarray, list[int]]:
    """12 units, 4 per pattern at amplitudes from 0.2 to 3: (W (12, 6, 3, 3), pattern of each)."""
    which = [0, 1, 2] * 4
    amps = np.linspace(0.2, 3.0, 12)
    return np.stack([pattern(k, a) for k, a in zip(which, amps, strict=True)]), which


def dominant(maps: np.ndarray) -> np.ndarray:
    """Each unit's strongest colour: (C_out,) in 0..2."""
    return maps.reshape(len(maps), -1, 3).sum(axis=1).argmax(axis=1)


def test_units_built_from_one_pattern_share_a_colour_and_its_shape() -> None:
    w, which = synthetic_layer()
    result = nmf_rgb(w)
    assert result.maps.shape == (12, 3, 3, 3) and result.error < 1e-2 and result.converged
    colour = dominant(result.maps)
    by_pattern = {
        k: {int(c) for c, p in zip(colour, which, strict=True) if p == k} for k in range(3)
    }
    assert all(len(c) == 1 for c in by_pattern.values())
    assert len({next(iter(c)) for c in by_pattern.values()}) == 3  # three different colours
    for u, k in enumerate(which):
        c = next(iter(by_pattern[k]))
        # The unit's colour lights exactly the pattern's positions; the others stay dark.
        assert np.array_equal(result.maps[u, :, :, c] > 0.5, SPATIAL[k] > 0)
        others = np.delete(result.maps[u], c, axis=-1)
        assert others.max() < 0.05
    assert result.maps.max() == pytest.approx(1.0)


def test_the_shared_fit_gives_one_meaning_per_colour_across_units() -> None:
    w, which = synthetic_layer()
    result = nmf_rgb(w)
    colour = dominant(result.maps)
    # A unit that mixes two patterns, left and right of the kernel, shows both colours where
    # the units made of each pattern alone show them.
    mixed = np.zeros((1, 6, 3, 3), dtype=np.float32)
    mixed[0, :, :, 0] = LOADINGS[0][:, None]  # pattern 0's channels on the left column
    mixed[0, :, :, 2] = LOADINGS[1][:, None]  # pattern 1's channels on the right column
    both = nmf_rgb(np.concatenate([w, mixed]))
    # Colours may be permuted between fits: read this fit's through the single-pattern units.
    c0, c1 = dominant(both.maps[[which.index(0)]])[0], dominant(both.maps[[which.index(1)]])[0]
    assert c0 != c1 and colour[which.index(0)] != colour[which.index(1)]
    unit = both.maps[-1]  # (3, 3, 3)
    assert (unit[:, 0, c0] > 0.5).all() and (unit[:, 0, c1] < 0.05).all()
    assert (unit[:, 2, c1] > 0.5).all() and (unit[:, 2, c0] < 0.05).all()
    # Each colour's component reads the channels of its pattern, with their signs.
    comp = both.components[c1]  # (2 * C_in,): [positive | negative]
    assert set(np.flatnonzero(comp > 0.1)) == {2, 6 + 3}  # +channel 2, -channel 3


def test_rgb_image_is_a_nearest_upsampling_of_the_map() -> None:
    unit_map = np.zeros((5, 5, 3), dtype=np.float32)
    unit_map[0, 0] = (1, 0, 0)
    unit_map[4, 4] = (0, 0, 1)
    img = rgb_image(unit_map, 96)
    assert img.size == (95, 95)  # 19 pixels a kernel position
    px = np.asarray(img)
    assert (px[:19, :19] == (255, 0, 0)).all() and (px[-19:, -19:] == (0, 0, 255)).all()
    assert (px[19:76, 19:76] == 0).all()


def test_svd_placement_is_numpys_svd_of_abs_weights_summed_over_the_kernel() -> None:
    w = np.random.default_rng(0).normal(size=(10, 7, 3, 3)).astype(np.float32)
    placed = svd_placement(w)
    u, s, vt = np.linalg.svd(np.abs(w).sum(axis=(2, 3)), full_matrices=False)
    np.testing.assert_allclose(placed.singular_values, s, rtol=1e-5)
    for k in range(2):
        sign = np.sign(u[:, k] @ placed.units[:, k])
        np.testing.assert_allclose(placed.units[:, k], sign * u[:, k], atol=1e-6)
        np.testing.assert_allclose(placed.inputs[:, k], sign * vt[k], atol=1e-6)
    assert (placed.units[:, 0] >= 0).all()  # |W| is non-negative: so is its first vector
    with pytest.raises(NoWeights):
        svd_placement(w[:1])


def _bn(c: int, seed: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(c).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(c, generator=g) + 0.5)
        bn.running_var.copy_(torch.rand(c, generator=g) + 0.5)
    return bn


class SqueezeExcite(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv_reduce = nn.Conv2d(c, 2, 1)
        self.conv_expand = nn.Conv2d(2, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.conv_expand(torch.relu(self.conv_reduce(s))))


class InvertedResidual(nn.Module):
    """An EfficientNet block without activations: 1x1 expand, depthwise 3x3, SE, 1x1 project."""

    def __init__(self, cin: int, mid: int, cout: int) -> None:
        super().__init__()
        self.conv_pw, self.bn1 = nn.Conv2d(cin, mid, 1, bias=False), _bn(mid, 1)
        self.conv_dw = nn.Conv2d(mid, mid, 3, padding=1, groups=mid, bias=False)
        self.bn2 = _bn(mid, 2)
        self.se = SqueezeExcite(mid)
        self.conv_pwl, self.bn3 = nn.Conv2d(mid, cout, 1, bias=False), _bn(cout, 3)

    def linear_path(self, h: torch.Tensor) -> torch.Tensor:
        """From the depthwise conv's input to the output, without SE and biases."""
        bn2, bn3 = self.bn2, self.bn3
        s2 = bn2.weight / torch.sqrt(bn2.running_var + bn2.eps)
        s3 = bn3.weight / torch.sqrt(bn3.running_var + bn3.eps)
        return s3[:, None, None] * self.conv_pwl(s2[:, None, None] * self.conv_dw(h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn3(self.conv_pwl(self.se(self.bn2(self.conv_dw(self.bn1(self.conv_pw(x)))))))


class Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int, cout: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), _bn(width, 4)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, padding=1, bias=False), _bn(width, 5)
        self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), _bn(cout, 6)
        self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), _bn(cout, 7))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn3(
            self.conv3(torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))))
        )
        return torch.relu(y + self.downsample(x))


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        OrderedDict(
            stem=nn.Sequential(OrderedDict(conv=nn.Conv2d(3, 4, 3, padding=1), bn=_bn(4, 0))),
            ir=InvertedResidual(4, 12, 6),
            res=Bottleneck(6, 5, 8),
            dw=nn.Conv2d(8, 8, 3, padding=1, groups=8),
            pool=nn.AdaptiveAvgPool2d(1),
            flat=nn.Flatten(),
            mlp=nn.Linear(8, 10),
        )
    ).eval()


def test_a_spatial_conv_gives_its_own_kernel_with_batchnorm_folded() -> None:
    net = tiny_net()
    order = conv_order(net, 16)
    uw = unit_weights(net, "stem", 4, order)
    assert uw.convs == ["stem.conv"] and not uw.expanded
    assert uw.channel_names == ["R", "G", "B"]  # the first conv reads the image
    bn = net.stem.bn
    scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach()
    np.testing.assert_allclose(
        uw.weight, (net.stem.conv.weight.detach() * scale[:, None, None, None]).numpy(), atol=1e-6
    )


def test_a_1x1_projection_is_expanded_through_the_depthwise_conv_skipping_the_gate() -> None:
    net = tiny_net()
    uw = unit_weights(net, "ir", 6, conv_order(net, 16))
    assert uw.convs == ["ir.conv_dw", "ir.conv_pwl"] and uw.weight.shape == (6, 12, 3, 3)
    assert "ir.conv_dw" in uw.inputs and uw.channel_names is None
    # The expanded kernel is the block's linear path from the depthwise conv's input.
    h = torch.randn(2, 12, 9, 9)
    with torch.no_grad():
        want = net.ir.linear_path(h)
    got = F.conv2d(h, torch.from_numpy(uw.weight), padding=1)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_a_bottleneck_is_expanded_through_conv2_not_its_shortcut() -> None:
    net = tiny_net()
    uw = unit_weights(net, "res", 8, conv_order(net, 16))
    assert uw.convs == ["res.conv2", "res.conv3"] and uw.weight.shape == (8, 5, 3, 3)
    b = net.res
    s2 = b.bn2.weight / torch.sqrt(b.bn2.running_var + b.bn2.eps)
    s3 = b.bn3.weight / torch.sqrt(b.bn3.running_var + b.bn3.eps)
    want = torch.einsum(
        "oh,hikl->oikl",
        s3[:, None] * b.conv3.weight[:, :, 0, 0],
        s2[:, None, None, None] * b.conv2.weight,
    )
    np.testing.assert_allclose(uw.weight, want.detach().numpy(), atol=1e-5)


def test_layers_without_a_full_convolution_say_why() -> None:
    net = tiny_net()
    order = conv_order(net, 16)
    with pytest.raises(NoWeights, match="depthwise"):
        unit_weights(net, "dw", 8, order)
    with pytest.raises(NoWeights, match="outputs its units"):
        unit_weights(net, "mlp", 10, order)
