"""Weight views (METHODS §6): NMF-RGB of each unit's kernel, and an SVD placement of a layer.

A layer's units are the output channels of the convolution that produces them. When that
convolution is 1x1 (an inverted-residual projection, a bottleneck's conv3) its units have no
spatial kernel of their own, so the chain back to the nearest spatial convolution of the same
block is multiplied through ("expanded weights"): BatchNorm scales are folded in, the
activations between the convolutions are ignored, and the kernel reads that spatial
convolution's input channels.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from sklearn.decomposition import NMF
from sklearn.exceptions import ConvergenceWarning
from torch import nn

from contracts.artifacts import FactorInput, WeightsFactors, WeightsSvd
from workers.ml.hooks import capture, producing_conv

# Path segments of modules whose convolutions do not produce a block's units: the residual
# shortcut and squeeze-excite / attention gates (whose output scales, never adds).
GATE_PATHS = {"se", "attn", "attention", "gate"}
_SIDE_PATHS = {"downsample", "shortcut", "skip", "conv_skip"} | GATE_PATHS


class NoWeights(Exception):  # noqa: N818 - a reason, reported in the job's result
    """The layer's units are not the output channels of a convolution (or not usefully)."""


@dataclass
class ConvCall:
    """A Conv2d as the dry forward pass met it."""

    path: str
    out_side: int  # the output's spatial side (1 for a squeeze-excite gate)


@dataclass
class UnitWeights:
    """The kernel that makes each unit of a layer, as the network applies it."""

    weight: np.ndarray  # (C_out, C_in, kh, kw), BatchNorm scales folded in
    convs: list[str]  # the convolutions multiplied together, spatial first, producer last
    inputs: str  # what the C_in input channels are
    channel_names: list[str] | None = None  # R, G, B when the kernel reads the image

    @property
    def expanded(self) -> bool:
        return len(self.convs) > 1


def conv_order(model: nn.Module, input_size: int) -> list[ConvCall]:
    """Every Conv2d of ``model`` in forward order, from one dry forward pass at batch 1."""
    paths = [p for p, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    device = next(model.parameters()).device
    x = torch.zeros(1, 3, input_size, input_size, device=device)  # (1, 3, S, S)
    with torch.no_grad(), capture(model, paths) as store:
        model(x)
        fired = list(store.items())  # insertion order = order of first call
    return [ConvCall(p, int(t.shape[-1]) if t.dim() == 4 else 1) for p, t in fired]


def _bn_after(model: nn.Module, path: str) -> nn.modules.batchnorm._BatchNorm | None:
    """The BatchNorm that directly follows a conv among its siblings (timm, torchvision)."""
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path)
    children = list(parent.named_children())
    for (a, _), (_, b) in zip(children, children[1:], strict=False):
        if a == name:
            conv = parent.get_submodule(name)
            if (
                isinstance(b, nn.modules.batchnorm._BatchNorm)
                and b.running_var is not None
                and b.num_features == conv.out_channels
            ):
                return b
            return None
    return None


def _conv(model: nn.Module, path: str) -> nn.Conv2d:
    conv = model.get_submodule(path)
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"{path} is a {type(conv).__name__}, not a Conv2d")
    return conv


def _scaled(model: nn.Module, path: str) -> torch.Tensor:
    """A conv's weight (C_out, C_in/groups, kh, kw) times the following BatchNorm's scale."""
    w = _conv(model, path).weight.detach().float().cpu()
    bn = _bn_after(model, path)
    if bn is None:
        return w
    assert bn.running_var is not None
    gamma = bn.weight.detach().float().cpu() if bn.weight is not None else 1.0
    scale = gamma / torch.sqrt(bn.running_var.detach().float().cpu() + bn.eps)  # (C_out,)
    return w * scale.reshape(-1, 1, 1, 1)


def _dense(conv: nn.Conv2d, w: torch.Tensor) -> torch.Tensor:
    """A grouped conv's weight as a full (C_out, C_in, kh, kw) one, zero across groups, so
    every unit's input channels are indexed alike."""
    g = conv.groups
    if g == 1:
        return w
    out_g, in_g = conv.out_channels // g, conv.in_channels // g
    full = torch.zeros(conv.out_channels, conv.in_channels, *w.shape[2:])
    for k in range(g):
        full[k * out_g : (k + 1) * out_g, k * in_g : (k + 1) * in_g] = w[
            k * out_g : (k + 1) * out_g
        ]
    return full


def _is_depthwise(conv: nn.Conv2d) -> bool:
    return conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels


def _is_1x1(conv: nn.Conv2d) -> bool:
    return tuple(conv.kernel_size) == (1, 1)


def expand(model: nn.Module, chain: Sequence[str]) -> torch.Tensor:
    """The kernel of a chain of convolutions, a spatial one then 1x1s, each feeding the next:
    (C_out of the last, C_in of the first, kh, kw), BatchNorm scales folded in."""
    # Multiply through from the producer back: (C_out, C_h) matrices, then the spatial kernel.
    mat = None
    for path in reversed(chain[1:]):
        m = _dense(_conv(model, path), _scaled(model, path))[:, :, 0, 0]  # (C_h', C_h)
        mat = m if mat is None else mat @ m
    first_conv = _conv(model, chain[0])
    w0 = _scaled(model, chain[0])  # (C_h, C_in/groups, kh, kw)
    if mat is None:
        return _dense(first_conv, w0)
    if _is_depthwise(first_conv):
        return mat[:, :, None, None] * w0[:, 0][None]  # (C_out, C_h, kh, kw)
    return torch.einsum("oh,hikl->oikl", mat, _dense(first_conv, w0))


def unit_weights(
    model: nn.Module, module_path: str, unit_count: int, order: Sequence[ConvCall]
) -> UnitWeights:
    """The kernel of each of a layer's ``unit_count`` units, found from ``order``
    (:func:`conv_order`); NoWeights says why there is none."""
    module_path = producing_conv(model, module_path, unit_count)
    prefix = f"{module_path}." if module_path else ""
    inside = [c for c in order if c.path == module_path or c.path.startswith(prefix)]
    widest = max((c.out_side for c in inside), default=1)
    eligible = [
        c
        for c in inside
        if not _SIDE_PATHS & set(c.path[len(prefix) :].split("."))
        and not (c.out_side == 1 and widest > 1)  # a gate on pooled features
    ]
    convs = {c.path: _conv(model, c.path) for c in eligible}
    producers = [i for i, c in enumerate(eligible) if convs[c.path].out_channels == unit_count]
    if not producers:
        raise NoWeights(f"no convolution in {module_path or 'the model'} outputs its units")
    at = producers[-1]
    producer = convs[eligible[at].path]
    if _is_depthwise(producer):
        raise NoWeights("depthwise convolution: each unit reads only its own input channel")
    chain = [eligible[at].path]
    if _is_1x1(producer):
        # Walk back along 1x1 convs to the spatial conv that feeds them, channels matching.
        for c in reversed(eligible[:at]):
            prev, first = convs[c.path], convs[chain[0]]
            if prev.out_channels != first.in_channels or not _is_1x1(first):
                break
            chain.insert(0, c.path)
            if not _is_1x1(prev):
                break
        if _is_1x1(convs[chain[0]]):
            chain = chain[-1:]  # no spatial kernel: the producing conv alone (SVD only)
    weight = expand(model, chain)
    first_conv = convs[chain[0]]
    if not torch.any(weight):
        raise NoWeights("its weights are all zero (a zero-initialised BatchNorm scale)")
    inputs = f"input channels of {chain[0]}"
    names = None
    if order and chain[0] == order[0].path and first_conv.in_channels == 3:
        inputs, names = f"image's R, G, B channels (read by {chain[0]})", ["R", "G", "B"]
    if len(chain) > 1:
        inputs += f", expanded through {', '.join(chain[1:])}"
    return UnitWeights(weight.numpy().astype(np.float32), chain, inputs, names)


@dataclass
class NmfRgb:
    """Three non-negative factors shared by all units of a layer, shown as R, G, B."""

    maps: np.ndarray  # (C_out, kh, kw, 3) in [0, 1]; each unit divided by its own max
    components: np.ndarray  # (3, 2*C_in), rows of unit norm: [positive | negative] weights
    error: float  # ||X - AB|| / ||X||
    converged: bool


def nmf_rgb(weight: np.ndarray, n_components: int = 3, seed: int = 0) -> NmfRgb:
    """NMF-RGB of a layer's kernels ``weight`` (C_out, C_in, kh, kw), one fit for all units
    so a colour means the same input-channel mix on every unit."""
    c_out, c_in, kh, kw = weight.shape
    w = weight.transpose(0, 2, 3, 1).reshape(c_out * kh * kw, c_in)  # rows: (unit, y, x)
    x = np.concatenate([np.maximum(w, 0), np.maximum(-w, 0)], axis=1)  # (C_out*kh*kw, 2C_in)
    x = x / (x.max() or 1.0)  # scale-free; keeps the solver's tolerance meaningful
    init = "nndsvda" if n_components <= min(x.shape) else "random"
    nmf = NMF(n_components=n_components, init=init, max_iter=1000, tol=1e-5, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # reported as `converged`
        a = nmf.fit_transform(x)  # (C_out*kh*kw, 3)
    b = nmf.components_  # (3, 2C_in)
    # NMF's factors are defined up to a scale each: put it all in the maps.
    norms = np.linalg.norm(b, axis=1)
    norms[norms == 0] = 1.0
    b, a = b / norms[:, None], a * norms[None, :]
    maps = a.reshape(c_out, kh, kw, n_components)
    top = maps.reshape(c_out, -1).max(axis=1)  # (C_out,)
    maps = maps / np.where(top > 0, top, 1.0)[:, None, None, None]
    err = float(np.linalg.norm(x - a @ b) / (np.linalg.norm(x) or 1.0))
    return NmfRgb(maps.astype(np.float32), b.astype(np.float32), err, nmf.n_iter_ < 1000)


def rgb_image(unit_map: np.ndarray, size: int = 96) -> Image.Image:
    """One unit's (kh, kw, 3) map in [0, 1] as an RGB image about ``size`` pixels wide,
    each kernel position a square of whole pixels (nearest neighbour)."""
    kh, kw, _ = unit_map.shape
    s = max(1, round(size / max(kh, kw)))
    px = np.clip(np.round(unit_map * 255), 0, 255).astype(np.uint8)
    return Image.fromarray(np.repeat(np.repeat(px, s, axis=0), s, axis=1), "RGB")


@dataclass
class SvdPlacement:
    """Units placed by the first two singular vectors of sum-over-kernel |W|."""

    units: np.ndarray  # (C_out, 2): first two left singular vectors of M (C_out x C_in)
    inputs: np.ndarray  # (C_in, 2): first two right singular vectors
    singular_values: np.ndarray  # (min(C_out, C_in),)


def svd_placement(weight: np.ndarray) -> SvdPlacement:
    """SVD of M = |W| summed over kernel positions, M[unit, input channel]; each vector's sign
    is chosen so its entries sum to a non-negative number (the first one is then >= 0)."""
    m = np.abs(weight).sum(axis=(2, 3))  # (C_out, C_in)
    if min(m.shape) < 2:
        raise NoWeights("fewer than two units or input channels: no two singular vectors")
    u, s, vt = np.linalg.svd(m.astype(np.float64), full_matrices=False)
    signs = np.where(u[:, :2].sum(axis=0) < 0, -1.0, 1.0)  # (2,)
    return SvdPlacement(u[:, :2] * signs, vt[:2].T * signs, s)


# ---------------------------------------------------------------------------------------------
# The artifacts pages read

TOP_INPUTS = 6  # input channels listed per colour
COLOURS = ("red", "green", "blue")


def svd_artifact(uw: UnitWeights, svd: SvdPlacement) -> WeightsSvd:
    """A layer's SVD placement as its ``weights_svd`` JSON."""
    return WeightsSvd(
        matrix="sum over kernel positions of |W|, rows: units, columns: inputs",
        inputs=uw.inputs,
        units=np.round(svd.units, 6).tolist(),  # (C_out, 2)
        input_channels=np.round(svd.inputs, 6).tolist(),  # (C_in, 2)
        singular_values=np.round(svd.singular_values[:16], 6).tolist(),
    )


def explained(svd: SvdPlacement) -> list[float]:
    """The share of M's squared norm each of the two placing vectors explains."""
    sq = svd.singular_values**2
    return [round(float(v), 4) for v in sq[:2] / sq.sum()]


def _top_inputs(component: np.ndarray, c_in: int, names: list[str] | None) -> list[FactorInput]:
    """A colour's strongest input channels (at least a fifth of the strongest one's weight):
    index, name, sign of the weight, share of the colour."""
    order = np.argsort(-component)[:TOP_INPUTS]
    total = float(component.sum()) or 1.0
    return [
        FactorInput(
            channel=int(i % c_in),
            name=names[i % c_in] if names else str(i % c_in),
            sign="+" if i < c_in else "-",
            share=round(float(component[i]) / total, 4),
        )
        for i in order
        if component[i] > 0 and component[i] >= 0.2 * component[order[0]]
    ]


def factors_artifact(uw: UnitWeights, nmf: NmfRgb) -> WeightsFactors:
    """What each colour of a layer's NMF-RGB images reads, as its ``weights_nmf`` factors JSON."""
    _, c_in, kh, kw = uw.weight.shape
    return WeightsFactors(
        inputs=uw.inputs,
        input_count=c_in,
        kernel=(kh, kw),
        error=round(nmf.error, 4),
        converged=nmf.converged,
        colours={
            colour: _top_inputs(nmf.components[k], c_in, uw.channel_names)
            for k, colour in enumerate(COLOURS)
        },
        components=np.round(nmf.components, 5).tolist(),  # (3, 2*C_in): [+W | -W]
    )


def colour_share(unit_map: np.ndarray) -> list[float]:
    """How much of a unit's (kh, kw, 3) NMF map each colour carries."""
    strength = unit_map.reshape(-1, unit_map.shape[-1]).sum(axis=0)  # (3,)
    return [round(float(v), 4) for v in strength / (strength.sum() or 1)]


@dataclass
class FirstPair:
    """The weights from the first convolution's units into the convolution that mixes them."""

    first: str  # the first convolution: its output channels are the units placed
    second: list[str]  # the convolution(s) reading them, expanded when the first is depthwise
    weight: np.ndarray  # (C_second, C_first, kh, kw), BatchNorm scales folded in


def first_pair(model: nn.Module, order: Sequence[ConvCall]) -> FirstPair:
    """The first two convolution layers as the Weight Banding article's SVD reads them; a
    depthwise second convolution mixes nothing, so it is expanded through the 1x1 after it."""
    convs = [c.path for c in order if not GATE_PATHS & set(c.path.split("."))]
    if len(convs) < 2:
        raise NoWeights("the model has fewer than two convolutions")
    first = _conv(model, convs[0])
    second = _conv(model, convs[1])
    if second.in_channels != first.out_channels:
        raise NoWeights(f"{convs[1]} does not read the {first.out_channels} units of {convs[0]}")
    chain = convs[1:2]
    if _is_depthwise(second):
        after = _conv(model, convs[2]) if len(convs) > 2 else None
        if after is None or not _is_1x1(after) or after.in_channels != second.out_channels:
            raise NoWeights(f"{convs[1]} is depthwise and no 1x1 convolution mixes its output")
        chain = convs[1:3]
    return FirstPair(convs[0], chain, expand(model, chain).numpy().astype(np.float32))
