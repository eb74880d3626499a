"""Weight structure on planted kernels: banding (horizontal, rotated, none), k-means groups of
spatial shapes, first-layer colour and frequency, derived branches, the first-pair SVD."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score
from torch import nn
from torchvision.models.googlenet import Inception

from tests.workers.test_weights import tiny_net
from workers.ml.banding import banding
from workers.ml.branches import concat_branches, group_branches
from workers.ml.weight_clusters import kmeans_groups, spatial_shapes
from workers.ml.weight_properties import carried, colour_share, spatial_frequency
from workers.ml.weights import NoWeights, conv_order, first_pair, nmf_rgb, svd_placement

RNG = np.random.default_rng(0)


def banded(n: int = 40, c_in: int = 8, k: int = 5, noise: float = 0.05) -> np.ndarray:
    """(n, c_in, k, k) kernels made of horizontal bands: each row one value per channel."""
    rows = RNG.normal(size=(n, c_in, k, 1))
    return rows * np.ones((1, 1, 1, k)) + noise * RNG.normal(size=(n, c_in, k, k))


def as_maps(weight: np.ndarray) -> np.ndarray:
    return weight.transpose(0, 2, 3, 1)  # (N, C, kh, kw) -> (N, kh, kw, C)


def test_horizontal_bands_score_near_plus_one_and_their_rotation_near_minus_one() -> None:
    w = banded()
    h = banding(as_maps(w))
    assert h.score is not None and h.score > 0.9
    assert h.horizontal.min() > 0.85 and h.vertical.max() < 0.1
    rotated = np.rot90(w, k=1, axes=(2, 3))  # the 90-degree-rotation experiment
    v = banding(as_maps(rotated))
    assert v.score == pytest.approx(-h.score, abs=1e-9)
    # No bands: independent noise scores near 0, both shares near the baseline.
    none = banding(as_maps(RNG.normal(size=(400, 8, 5, 5))))
    assert none.score is not None and abs(none.score) < 0.03
    assert none.horizontal.mean() == pytest.approx(none.baseline, abs=0.03)
    assert none.baseline == pytest.approx(4 / 24)


def test_banding_reads_the_same_through_the_layers_nmf_rgb_maps() -> None:
    w = np.abs(banded(noise=0.02)).astype(np.float32)
    maps = nmf_rgb(w).maps  # (N, 5, 5, 3): what the layer page shows
    assert banding(maps).score > 0.8
    assert banding(nmf_rgb(np.ascontiguousarray(np.rot90(w, 1, (2, 3)))).maps).score < -0.8
    # Isotropic blobs: no direction.
    yy, xx = np.mgrid[-2:3, -2:3]
    blob = np.exp(-(yy**2 + xx**2) / 2.0)[None, None] * RNG.uniform(0.5, 1, (30, 4, 1, 1))
    assert abs(banding(nmf_rgb(blob.astype(np.float32)).maps).score) < 0.05


def test_flat_maps_have_no_direction_and_1x1_maps_are_refused() -> None:
    flat = np.ones((3, 3, 3, 2))
    assert banding(flat).score is None
    with pytest.raises(ValueError, match="no rows"):
        banding(np.ones((3, 1, 1, 2)))


def test_kmeans_recovers_planted_spatial_shapes_and_picks_their_number() -> None:
    shapes = [np.zeros((5, 5)) for _ in range(6)]
    shapes[0][0], shapes[1][-1], shapes[2][:, 0], shapes[3][:, -1] = 1, 1, 1, 1
    shapes[4][2, 2], shapes[5][np.eye(5, dtype=bool)] = 1, 1
    which = np.repeat(np.arange(6), 20)  # 120 units, 20 per shape
    w = np.stack([RNG.uniform(0.5, 2, (6, 1, 1)) * shapes[k] for k in which])  # (120, 6, 5, 5)
    w = w + 0.03 * RNG.normal(size=w.shape)
    x = spatial_shapes(w)
    assert x.shape == (120, 25) and np.allclose(np.linalg.norm(x, axis=1), 1)
    groups = kmeans_groups(x)
    assert groups.k == 6 and adjusted_rand_score(which, groups.labels) == 1.0
    assert set(groups.silhouettes) == set(range(4, 20))
    assert list(np.bincount(groups.labels)) == [20] * 6  # numbered largest first
    with pytest.raises(ValueError, match="too few"):
        kmeans_groups(x[:3])


def test_first_layer_colour_and_frequency_and_their_carrying_to_a_deeper_layer() -> None:
    yy, xx = np.mgrid[-3:4, -3:4]
    blob = np.exp(-(yy**2 + xx**2) / 4.0)
    stripes = np.cos(np.pi * xx)  # the finest grating: one cycle every two pixels
    grey = np.stack([blob, blob, blob])  # (3, 7, 7): R = G = B
    opponent = np.stack([blob, -blob, 0 * blob])  # red on, green off
    w = np.stack([grey, opponent, np.stack([stripes] * 3)])
    colour = colour_share(w)
    assert colour[0] == pytest.approx(0) and colour[1] > 0.9 and colour[2] == pytest.approx(0)
    freq = spatial_frequency(w)
    assert freq[2] > 2 * freq[0] and freq[0] == pytest.approx(freq[1])
    # A deeper unit reading only the opponent unit is all colour; an even mix is half.
    matrix = np.array([[0.0, -2.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    deep = carried(colour, matrix)
    assert deep[0] == pytest.approx(colour[1]) and deep[1] == pytest.approx(colour[1] / 2)
    assert np.isnan(deep[2])  # reads nothing from the first layer


def test_an_inception_modules_branches_are_read_from_its_concatenation() -> None:
    net = nn.Sequential(OrderedDict(a=nn.Conv2d(3, 12, 3), mixed=Inception(12, 4, 3, 5, 2, 3, 2)))
    branches = concat_branches(net.eval(), ["a", "mixed"], 32)["mixed"]
    assert [(b.name, b.start, b.stop) for b in branches] == [
        ("branch1", 0, 4),
        ("branch2", 4, 9),
        ("branch3", 9, 12),
        ("branch4", 12, 14),
    ]
    assert branches[1].convs == "1x1, 3x3" and branches[0].convs == "1x1"
    # A residual block adds its paths, never stacks them.
    assert concat_branches(tiny_net(), ["res"], 16) == {"res": []}
    grouped = group_branches(nn.Conv2d(8, 6, 3, groups=2))
    assert [(b.name, b.start, b.stop) for b in grouped] == [("group1", 0, 3), ("group2", 3, 6)]
    assert group_branches(nn.Conv2d(8, 8, 3, groups=8)) == []  # depthwise: no branches


def test_first_pair_reads_the_second_conv_or_expands_a_depthwise_one() -> None:
    net = nn.Sequential(nn.Conv2d(3, 8, 5), nn.ReLU(), nn.Conv2d(8, 6, 3)).eval()
    pair = first_pair(net, conv_order(net, 16))
    assert pair.first == "0" and pair.second == ["2"] and pair.weight.shape == (6, 8, 3, 3)
    np.testing.assert_allclose(pair.weight, net[2].weight.detach().numpy())
    # Units of the first layer placed by the right singular vectors of |W| summed.
    placed = svd_placement(pair.weight)
    assert placed.inputs.shape == (8, 2)
    net2 = tiny_net()  # stem 3->4, then an inverted residual: 1x1 expand first
    pair2 = first_pair(net2, conv_order(net2, 16))
    assert pair2.second == ["ir.conv_pw"] and pair2.weight.shape == (12, 4, 1, 1)
    dw = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3, groups=8), nn.Conv2d(8, 5, 1), nn.Conv2d(5, 4, 1)
    ).eval()
    pair3 = first_pair(dw, conv_order(dw, 16))
    assert pair3.second == ["1", "2"] and pair3.weight.shape == (5, 8, 3, 3)
    want = torch.einsum("oh,hkl->ohkl", dw[2].weight[:, :, 0, 0], dw[1].weight[:, 0]).detach()
    np.testing.assert_allclose(pair3.weight, want.numpy(), atol=1e-6)
    with pytest.raises(NoWeights, match="fewer than two"):
        first_pair(nn.Conv2d(3, 4, 3), conv_order(nn.Conv2d(3, 4, 3), 8))
