"""Fold BatchNorm into the convolution before it, for inference-only work (feature vis).

BatchNorm was ~15% of a feature-visualization step's profile on the CPU (measured); folded,
it costs nothing. torch's own fusion helpers need the conv/bn pairs named by hand, so pairs are
found here as consecutive children (conv, bn) and the result is checked numerically against
the original on the layers that will be read; if anything differs, the original is used.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from workers.ml.hooks import run_to


def _fold_pair(conv: nn.Conv2d, bn: nn.modules.batchnorm._BatchNorm) -> None:
    assert bn.running_mean is not None and bn.running_var is not None
    scale = (bn.weight if bn.weight is not None else torch.ones_like(bn.running_var)) / torch.sqrt(
        bn.running_var + bn.eps
    )  # (C,)
    shift = bn.bias if bn.bias is not None else torch.zeros_like(bn.running_mean)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    with torch.no_grad():
        conv.weight.mul_(scale.reshape(-1, 1, 1, 1))  # (C_out, C_in/g, kh, kw)
        conv.bias = nn.Parameter((bias - bn.running_mean) * scale + shift)


def _tail(bn: nn.Module) -> nn.Module:
    # timm's BatchNormAct2d applies dropout and an activation after normalising: keep those.
    parts = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None)) if m is not None]
    return nn.Sequential(*parts) if parts else nn.Identity()


def fold_batchnorm(
    model: nn.Module, check_paths: Sequence[str], input_size: int, *, atol: float = 1e-3
) -> tuple[nn.Module, int]:
    """A folded copy of ``model`` (eval mode) and the number of pairs folded.

    Returns ``(model, 0)`` unchanged when nothing folds or the check on ``check_paths`` fails.
    """
    folded = copy.deepcopy(model).eval()
    n = 0
    read = set(check_paths)
    for parent_path, parent in list(folded.named_modules()):
        children = list(parent.named_children())
        for (name_a, a), (name_b, b) in zip(children, children[1:], strict=False):
            conv_path = f"{parent_path}.{name_a}" if parent_path else name_a
            if (
                conv_path not in read  # a conv whose own output is read keeps its BN
                and isinstance(a, nn.Conv2d)
                and isinstance(b, nn.modules.batchnorm._BatchNorm)
                and b.track_running_stats
                and b.running_mean is not None
                and a.out_channels == b.num_features
            ):
                _fold_pair(a, b)
                setattr(parent, name_b, _tail(b))
                n += 1
    if n == 0:
        return model, 0
    param = next(model.parameters())
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, input_size, input_size, generator=gen).to(param.device, param.dtype)
    was_training = model.training
    try:
        with torch.no_grad():
            before = run_to(model.eval(), x, list(check_paths))
            after = run_to(folded, x, list(check_paths))
    finally:
        model.train(was_training)
    for p in check_paths:
        scale = float(before[p].abs().max()) or 1.0
        if not torch.allclose(before[p], after[p], rtol=1e-3, atol=atol * scale):
            return model, 0
    return folded, n
