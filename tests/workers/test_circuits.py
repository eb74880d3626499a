"""Circuits: the summed expanded weights between two layers, on networks whose weights are
known (a lone conv, a bottleneck with its shortcut, an inverted residual with its gate,
torchvision's Inception module) and checked against a full-size linear pass."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models.googlenet import Inception

from tests.workers.test_weights import Bottleneck, InvertedResidual, _bn, tiny_net
from workers.ml.circuits import Linearised, NoCircuit, path_weights, strongest
from workers.ml.weights import _scaled


def scale(bn: nn.BatchNorm2d) -> torch.Tensor:
    return (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach()  # (C,)


def summed(conv: nn.Conv2d, bn: nn.BatchNorm2d | None = None) -> torch.Tensor:
    """A conv's kernel summed over positions (C_out, C_in), times its BatchNorm's scale."""
    w = conv.weight.detach().sum(dim=(2, 3))
    return w * scale(bn)[:, None] if bn is not None else w


def full_size(model: nn.Module, source: str, target: str, channels: int) -> np.ndarray:
    """The same matrix the slow way: the linearised network at full size, each input channel
    a large constant field, the target read at its centre (far from any border)."""
    side = 41
    field = torch.cat([torch.zeros(1, channels), torch.eye(channels)])[:, :, None, None]
    field = field.expand(-1, -1, side, side).contiguous()  # (C+1, C, side, side)

    def inject(*_: object) -> torch.Tensor:
        return field

    h = model.get_submodule(source).register_forward_hook(inject)
    got: dict[str, torch.Tensor] = {}
    h2 = model.get_submodule(target).register_forward_hook(
        lambda _m, _i, o: got.setdefault("y", o)
    )
    try:
        with torch.no_grad(), Linearised(constant_field=False):
            model(torch.zeros(1, 3, 64, 64))
    finally:
        h.remove()
        h2.remove()
    y = got["y"]
    c = y.shape[-1] // 2
    return (y[1:, :, c, c] - y[:1, :, c, c]).T.double().numpy()  # (C_target, C)


def test_one_conv_between_layers_is_its_kernel_with_batchnorm_folded() -> None:
    net = tiny_net()
    (pw,) = path_weights(net, "stem", ["ir"], 4).values()
    # stem -> ir runs three convs (1x1 expand, depthwise, 1x1 project) and a gate: expanded.
    assert pw.convs == ["ir.conv_pw", "ir.conv_dw", "ir.conv_pwl"] and not pw.direct
    two = nn.Sequential(
        OrderedDict(
            a=nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), _bn(4, 1), nn.ReLU()),
            b=nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), _bn(6, 2), nn.ReLU6()),
        )
    ).eval()
    pw = path_weights(two, "a", ["b"], 4)["b"]
    assert pw.direct and pw.convs == ["b.0"] and pw.matrix.shape == (6, 4)
    # The same kernel the NMF view reads (weights._scaled), summed over its positions.
    np.testing.assert_allclose(pw.matrix, _scaled(two, "b.0").sum(dim=(2, 3)).numpy(), atol=1e-6)


def test_a_bottleneck_adds_its_shortcut_to_the_product_of_its_convs() -> None:
    torch.manual_seed(1)
    net = nn.Sequential(
        OrderedDict(a=nn.Conv2d(3, 6, 3, padding=1), res=Bottleneck(6, 5, 8), out=nn.Identity())
    ).eval()
    b = net.res
    want = summed(b.conv3, b.bn3) @ summed(b.conv2, b.bn2) @ summed(b.conv1, b.bn1)
    want += summed(b.downsample[0], b.downsample[1])
    pw = path_weights(net, "a", ["res"], 6)["res"]
    np.testing.assert_allclose(pw.matrix, want.numpy(), atol=1e-5)
    assert set(pw.convs) == {"res.conv1", "res.conv2", "res.conv3", "res.downsample.0"}
    np.testing.assert_allclose(pw.matrix, full_size(net, "a", "res", 6), atol=1e-4)


def test_an_inverted_residual_is_read_through_its_depthwise_conv_with_the_gate_open() -> None:
    torch.manual_seed(2)
    net = nn.Sequential(OrderedDict(a=nn.Conv2d(3, 4, 3, padding=1), ir=InvertedResidual(4, 12, 6)))
    net.eval()
    b = net.ir
    dw = summed(b.conv_dw)[:, 0] * scale(b.bn2)  # (12,): depthwise, one input each
    want = summed(b.conv_pwl, b.bn3) @ torch.diag(dw) @ summed(b.conv_pw, b.bn1)
    pw = path_weights(net, "a", ["ir"], 4)["ir"]
    np.testing.assert_allclose(pw.matrix, want.numpy(), atol=1e-5)
    assert "ir.se.conv_reduce" not in pw.convs  # the gate scales; it is no path
    np.testing.assert_allclose(pw.matrix, full_size(net, "a", "ir", 4), atol=1e-4)


def inception_net() -> nn.Module:
    torch.manual_seed(3)
    net = nn.Sequential(
        OrderedDict(
            a=nn.Conv2d(3, 12, 3, padding=1),
            mixed=Inception(12, 4, 3, 5, 2, 3, 2),  # 4 + 5 + 3 + 2 = 14 units
            pool=nn.MaxPool2d(3, 2, ceil_mode=True),
            next=Inception(14, 2, 2, 3, 2, 2, 3),  # 2 + 3 + 2 + 3 = 10 units
        )
    ).eval()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.running_var.uniform_(0.5, 1.5)
    return net


def test_an_inception_module_stacks_its_branches_and_opens_its_max_pool() -> None:
    net = inception_net()
    mixed = net.mixed
    pws = path_weights(net, "a", ["mixed", "next"], 12)
    m = pws["mixed"].matrix
    assert m.shape == (14, 12) and len(pws["mixed"].convs) == 6
    b1, b4 = mixed.branch1, mixed.branch4[1]
    # The 1x1 branch is units 0..3, one conv; the pool branch (max pool, then 1x1) the last 2.
    np.testing.assert_allclose(m[:4], summed(b1.conv, b1.bn).numpy(), atol=1e-5)
    np.testing.assert_allclose(m[-2:], summed(b4.conv, b4.bn).numpy(), atol=1e-5)
    b2 = mixed.branch2
    chain = summed(b2[1].conv, b2[1].bn) @ summed(b2[0].conv, b2[0].bn)
    np.testing.assert_allclose(m[4:9], chain.numpy(), atol=1e-5)
    np.testing.assert_allclose(m, full_size(net, "a", "mixed", 12), atol=1e-4)
    # Two modules on, through a max pool and twelve convs: still the full-size answer.
    assert len(pws["next"].convs) == 12
    np.testing.assert_allclose(pws["next"].matrix, full_size(net, "a", "next", 12), atol=1e-4)


def test_a_layer_that_is_not_a_cut_of_the_network_is_refused() -> None:
    class Dense(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1)
            self.c = nn.Conv2d(8, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a = self.a(x)
            return self.c(torch.cat([a, self.b(a)], 1))  # c reads a beside b's output

    with pytest.raises(NoCircuit, match="not a chain"):
        path_weights(Dense().eval(), "b", ["c"], 4)
    with pytest.raises(NoCircuit, match="does not output 3"):
        path_weights(Dense().eval(), "b", ["c"], 3)


def test_strongest_lists_the_largest_and_most_negative_weights_in_order() -> None:
    w = np.array([0.1, -2.0, 3.0, 0.0, -0.5, 1.5, 0.2])
    top = strongest(w, 2)
    assert top == {"positive": [(2, 3.0), (5, 1.5)], "negative": [(1, -2.0), (4, -0.5)]}
    assert strongest(np.array([1.0, 2.0]), 3)["negative"] == []
