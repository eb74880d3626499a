"""Composable objectives (Lucent style), each giving one score per batch element to maximise.

Batch element i optimises its own unit ``ctx.units[i]``; the loss is minus the sum of the
per-element scores, so one backward pass serves every unit in the batch and no element's
gradient depends on another's (diversity couples only the images of one group).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from contracts.layout import Layout
from workers.ml.hooks import to_unit_maps

NCHW = Layout("nchw")


@dataclass
class Context:
    """What an objective sees after one forward pass."""

    raw: dict[str, torch.Tensor]  # layer path -> raw output, still in the autograd graph
    layouts: dict[str, Layout]
    units: torch.Tensor  # (N,) long: the unit each batch element optimises
    groups: torch.Tensor  # (N,) long: elements sharing a group are one unit's diverse set
    images: torch.Tensor  # (N, 3, S, S) the parameterized images before transforms
    _maps: dict[str, torch.Tensor] = field(default_factory=dict)

    def maps(self, layer: str) -> torch.Tensor:
        """Unit maps of ``layer``, (N, U, H, W)."""
        if layer not in self._maps:
            self._maps[layer] = to_unit_maps(self.raw[layer], self.layouts[layer])
        return self._maps[layer]

    def unit_maps(self, layer: str, unit: int | None) -> torch.Tensor:
        """Each element's own unit map (or ``unit``'s for all), (N, H, W)."""
        m = self.maps(layer)  # (N, U, H, W)
        n = m.shape[0]
        idx = self.units if unit is None else torch.full((n,), unit, device=m.device)
        return m[torch.arange(n, device=m.device), idx.to(m.device)]  # (N, H, W)


class Objective:
    """A per-element score function that composes with +, -, unary - and scalar *."""

    def __init__(
        self, fn: Callable[[Context], torch.Tensor], layers: dict[str, Layout], name: str
    ) -> None:
        self.fn = fn
        self.layers = dict(layers)
        self.name = name

    def __call__(self, ctx: Context) -> torch.Tensor:
        """Scores, shape (N,)."""
        return self.fn(ctx)

    def __repr__(self) -> str:
        return f"Objective({self.name})"

    def __add__(self, other: Objective | float) -> Objective:
        if isinstance(other, Objective):
            return Objective(
                lambda c: self(c) + other(c),
                {**self.layers, **other.layers},
                f"{self.name} + {other.name}",
            )
        return Objective(lambda c: self(c) + other, self.layers, f"{self.name} + {other}")

    def __radd__(self, other: float) -> Objective:
        # Lets sum([...]) start from 0.
        return self if other == 0 else self + other

    def __neg__(self) -> Objective:
        return -1.0 * self

    def __sub__(self, other: Objective | float) -> Objective:
        return self + (-other)

    def __rsub__(self, other: float) -> Objective:
        return (-self) + other

    def __mul__(self, k: float) -> Objective:
        if isinstance(k, Objective):
            raise TypeError("objectives scale by numbers only")
        return Objective(lambda c: k * self(c), self.layers, f"{k} * ({self.name})")

    __rmul__ = __mul__

    def __truediv__(self, k: float) -> Objective:
        return self * (1.0 / k)


def _top_mean(m: torch.Tensor, top: int | None) -> torch.Tensor:
    """(N, P) -> (N,): the mean of each row's ``top`` largest values (all when None)."""
    if top is None or top >= m.shape[1]:
        return m.mean(dim=1)
    return m.topk(top, dim=1).values.mean(dim=1)


def channel(
    layer: str, unit: int | None = None, layout: Layout = NCHW, top: int | None = None
) -> Objective:
    """Mean of the unit's map over positions (``unit=None``: each element's own unit).

    ``top=k`` averages only the k highest positions: between Lucent's mean (every position)
    and the max (one position) that dataset examples are ranked by, whose gradient reaches one
    position per step. Measured on the default model (224 px, 512 steps): top-16 lifted
    blocks.0 from 3/8 to 8/8 units at or above their best dataset example.
    """

    def fn(c: Context) -> torch.Tensor:
        return _top_mean(c.unit_maps(layer, unit).flatten(1), top)  # (N,)

    name = f"channel({layer}, {unit})" if top is None else f"channel({layer}, {unit}, top={top})"
    return Objective(fn, {layer: layout}, name)


def neuron(layer: str, unit: int | None = None, layout: Layout = NCHW) -> Objective:
    """The unit's activation at the centre position."""

    def fn(c: Context) -> torch.Tensor:
        m = c.unit_maps(layer, unit)  # (N, H, W)
        return m[:, m.shape[1] // 2, m.shape[2] // 2]  # (N,)

    return Objective(fn, {layer: layout}, f"neuron({layer}, {unit})")


def negative(
    layer: str, unit: int | None = None, layout: Layout = NCHW, top: int | None = None
) -> Objective:
    """Images that drive the unit most negative: minus the mean of its (``top`` lowest) map."""

    def fn(c: Context) -> torch.Tensor:
        return _top_mean(-c.unit_maps(layer, unit).flatten(1), top)  # (N,)

    name = f"negative({layer}, {unit})" if top is None else f"negative({layer}, {unit}, top={top})"
    return Objective(fn, {layer: layout}, name)


def direction(layer: str, vector: torch.Tensor, layout: Layout = NCHW) -> Objective:
    """Cosine between the activation vector at each position and ``vector``, mean over positions.

    ``vector`` is (U,) for all elements or (N, U) for one direction per element.
    """

    def fn(c: Context) -> torch.Tensor:
        m = c.maps(layer)  # (N, U, H, W)
        v = vector.to(m.device, m.dtype)
        v = v.expand(m.shape[0], -1) if v.dim() == 1 else v  # (N, U)
        return F.cosine_similarity(m, v[:, :, None, None], dim=1).mean(dim=(1, 2))  # (N,)

    return Objective(fn, {layer: layout}, f"direction({layer})")


def diversity(layer: str, layout: Layout = NCHW) -> Objective:
    """Summed cosine similarity of an element's Gram matrix with the others' in its group.

    Subtract it (Lucent: ``channel - 1e2 * diversity``). Summed over a group this equals Lucent's
    penalty times the group size, matching Lucent's weighting, where the channel term is a mean.
    """

    def fn(c: Context) -> torch.Tensor:
        m = c.maps(layer)  # (N, U, H, W)
        flat = m.flatten(2)  # (N, U, HW)
        grams = flat @ flat.transpose(1, 2)  # (N, U, U)
        grams = F.normalize(grams.flatten(1), dim=1)  # (N, U*U), unit Frobenius norm
        sims = grams @ grams.T  # (N, N)
        same = c.groups[:, None] == c.groups[None, :]  # (N, N)
        same &= ~torch.eye(len(c.groups), dtype=torch.bool, device=same.device)
        return (sims * same.to(sims.dtype)).sum(dim=1)  # (N,)

    return Objective(fn, {layer: layout}, f"diversity({layer})")


def l2(constant: float = 0.5) -> Objective:
    """Mean squared distance of the image from ``constant`` (subtract it as a penalty)."""
    return Objective(
        lambda c: ((c.images - constant) ** 2).mean(dim=(1, 2, 3)),  # (N,)
        {},
        f"l2({constant})",
    )


def facet(
    base: Objective,
    layer: str,
    weights: torch.Tensor,
    strength: float | torch.Tensor = 1.0,
    layout: Layout = NCHW,
) -> Objective:
    """Faceted term: strength * w . sum over positions of g(x) * relu(stop_grad(d base / d g)).

    g is ``layer``'s output, w a linear probe's weights over its units (openai/CLIP-featurevis
    ``example_facets.py``); ``strength`` is a number or (N,) per element.
    """
    w = weights.detach()

    def fn(c: Context) -> torch.Tensor:
        g_raw = c.raw[layer]
        # Gradient of the unit objective at g; kept out of the graph (stop_gradient).
        (grad,) = torch.autograd.grad(base(c).sum(), g_raw, retain_graph=True)
        g = c.maps(layer)  # (N, C, H, W)
        attr = g * torch.relu(to_unit_maps(grad, layout))  # (N, C, H, W)
        s = torch.as_tensor(strength, dtype=g.dtype, device=g.device)
        return s * torch.einsum("nchw,c->n", attr, w.to(g.device, g.dtype))  # (N,)

    return Objective(fn, {**base.layers, layer: layout}, f"facet({base.name}, {layer})")
