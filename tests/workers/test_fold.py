"""BatchNorm folding: same activations, original untouched, wrong pairings refused."""

from __future__ import annotations

import timm
import torch
from torch import nn

from workers.ml.fold import fold_batchnorm
from workers.ml.hooks import run_to


def _randomise_bn(model: nn.Module) -> None:
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)


def test_folded_efficientnet_gives_the_same_activations() -> None:
    torch.manual_seed(0)
    model = timm.create_model("test_efficientnet", pretrained=False)
    _randomise_bn(model)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded, n = fold_batchnorm(model, ["blocks.2", "conv_head"], 96)
    assert n > 10 and folded is not model
    assert model.training  # the original keeps its mode and weights
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    x = torch.rand(3, 3, 96, 96)
    with torch.no_grad():
        a = run_to(model.eval(), x, ["blocks.2", "conv_head"])
        b = run_to(folded, x, ["blocks.2", "conv_head"])
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-4)
    # conv_head's own output is read, so its BatchNorm stays; every other one is folded.
    left = [n for n, m in folded.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert left == ["bn2"]


class Misordered(nn.Module):
    """Children declared conv, bn, but forward applies bn to the input first."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.bn(x))


def test_a_pairing_that_changes_results_is_refused() -> None:
    model = Misordered()
    _randomise_bn(model)
    same, n = fold_batchnorm(model, ["conv"], 16)
    assert same is model and n == 0
