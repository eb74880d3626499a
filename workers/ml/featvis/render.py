"""The optimisation loop: render many units in one batch, each element with its own unit."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from torch import nn

from contracts.jobs import DEFAULT_OBJECTIVE, FEATVIS_OBJECTIVES
from contracts.layout import Layout
from workers.ml.featvis import objectives as obj
from workers.ml.featvis.facets import FacetProbe
from workers.ml.featvis.param import FourierImage
from workers.ml.featvis.transforms import (
    TransformConfig,
    frozen,
    resize_to,
    sample_theta,
    to_pil,
    warp,
)
from workers.ml.fold import fold_batchnorm
from workers.ml.hooks import run_to, to_unit_maps
from workers.ml.models import PreprocessConfig
from workers.ml.preprocess import from_pil, input_hw, normalize

CODE_VERSION = "featvis-2"
# channel_top16, diversity and negative average each unit's 16 strongest (lowest) positions
# (objectives.channel explains why); the channel objective is Lucid's plain spatial mean.
CHANNEL_TOP = 16
TOP_OBJECTIVES = ("channel_top16", "negative", "diversity")  # the ones ``top`` applies to
# Measured on 2 CPU cores: batch 8 was no faster per unit than 4 (early, high-resolution
# layers were slower per unit), so the CPU default stays small.
CPU_BATCH_SIZE = 4
DIVERSITY_IMAGES = 4
DIVERSITY_WEIGHT = 1e2
FACET_L2_WEIGHT = 10.0
OBJECTIVES = FEATVIS_OBJECTIVES


@dataclass
class RenderResult:
    """One unit's visualization and how strongly it drives the unit (no transforms)."""

    unit: int
    images: list[Image.Image]
    acts_max: list[float]  # per image: max of the unit's map over positions
    acts_mean: list[float]  # per image: mean of the unit's map over positions
    seed: int
    params: dict[str, object] = field(default_factory=dict)

    @property
    def act_max(self) -> float:
        """The best image's max over positions (the score dataset mining ranks by)."""
        return max(self.acts_max)

    @property
    def act_mean(self) -> float:
        """The best image's mean over positions (the channel objective)."""
        return max(self.acts_mean)


@dataclass
class RenderStep:
    """State after one optimisation step, yielded by :func:`optimise`."""

    step: int
    scores: torch.Tensor  # (N,) objective under this step's transforms, before the update
    param: FourierImage

    def images(self) -> torch.Tensor:
        """The current images, (N, 3, S, S) in [0, 1]."""
        with torch.no_grad():
            return self.param()


def element_seeds(seed: int, unit: int, k: int = 0) -> tuple[int, np.random.Generator]:
    """Init seed and transform generator of one batch element, from (seed, unit, image index)."""
    init_ss, transform_ss = np.random.SeedSequence([seed, unit, k]).spawn(2)
    return int(init_ss.generate_state(1)[0]), np.random.default_rng(transform_ss)


def optimise(
    model: nn.Module,
    objective: obj.Objective,
    *,
    units: Sequence[int],
    seeds: Sequence[tuple[int, int]],
    preprocess: PreprocessConfig,
    steps: int = 512,
    size: int = 128,
    lr: float = 0.05,
    groups: Sequence[int] | None = None,
    transforms: TransformConfig | None = None,
    device: torch.device | str = "cpu",
    channels_last: bool = True,
) -> Iterator[RenderStep]:
    """Optimise one image per element; yields after every step.

    ``seeds[i]`` is (seed, image index) of element i; with ``units[i]`` it fixes the element's
    initial image and transform sequence, so results do not depend on the batch composition.
    The model must be in :func:`frozen` state (``render_units`` does this).
    """
    device = torch.device(device)
    cfg = transforms or TransformConfig()
    hw = input_hw(preprocess)
    pairs = [element_seeds(s, u, k) for u, (s, k) in zip(units, seeds, strict=True)]
    param = FourierImage([p[0] for p in pairs], size, device=device)
    rngs = [p[1] for p in pairs]
    unit_t = torch.tensor(list(units), dtype=torch.long, device=device)  # (N,)
    group_t = torch.tensor(
        list(groups) if groups is not None else range(len(units)), device=device
    )  # (N,)
    optimizer = torch.optim.Adam(param.parameters(), lr=lr)
    paths = list(objective.layers)
    for step in range(1, steps + 1):
        theta = sample_theta(rngs, cfg, size).to(device)  # (N, 2, 3)
        images = param()  # (N, 3, S, S)
        x = normalize(warp(images, theta, hw, cfg.fill), preprocess)  # (N, 3, H, W)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        raw = run_to(model, x, paths, detach=False) if paths else {}
        ctx = obj.Context(raw, objective.layers, unit_t, group_t, images)
        scores = objective(ctx)  # (N,)
        optimizer.zero_grad(set_to_none=True)
        # A sum, not a mean: each element's gradient is exactly its own objective's.
        (-scores.sum()).backward()
        optimizer.step()
        yield RenderStep(step, scores.detach(), param)


@torch.no_grad()
def evaluate_units(
    model: nn.Module,
    module_path: str,
    layout: Layout,
    units: Sequence[int],
    images: torch.Tensor,
    preprocess: PreprocessConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Max and mean over positions of each image's unit, (N,) each: no transforms."""
    x = resize_to(images, input_hw(preprocess))  # (N, 3, H, W)
    x = normalize(x, preprocess)
    maps = to_unit_maps(run_to(model, x, [module_path])[module_path], layout)  # (N, U, h, w)
    idx = torch.as_tensor(list(units), device=maps.device)
    own = maps[torch.arange(len(idx), device=maps.device), idx].flatten(1)  # (N, h*w)
    return own.amax(dim=1), own.mean(dim=1)


def build_objective(
    name: str,
    module_path: str,
    layout: Layout,
    *,
    facet: FacetProbe | None = None,
    facet_layer: str | None = None,
    facet_strength: float = 5.0,
    top: int | None = CHANNEL_TOP,
) -> obj.Objective:
    """The named objective on each element's own unit, with the facet terms if a probe is given.

    ``top``: the positions averaged by channel_top16, negative and diversity."""
    if name == "channel":
        base = obj.channel(module_path, layout=layout)  # Lucid's: the spatial mean
    elif name in ("channel_top16", "diversity"):
        base = obj.channel(module_path, layout=layout, top=top)
    elif name == "neuron":
        base = obj.neuron(module_path, layout=layout)
    elif name == "negative":
        base = obj.negative(module_path, layout=layout, top=top)
    else:
        raise ValueError(f"unknown objective {name!r}; choose from {OBJECTIVES}")
    total = base
    if name == "diversity":
        total = total - DIVERSITY_WEIGHT * obj.diversity(module_path, layout=layout)
    if facet is not None:
        layer = facet_layer or facet.layer
        total = total + obj.facet(base, layer, facet.weights, facet_strength, facet.layout)
        total = total - FACET_L2_WEIGHT * obj.l2()
    return total


def auto_batch_size(
    model: nn.Module,
    objective: obj.Objective,
    preprocess: PreprocessConfig,
    size: int,
    device: torch.device | str,
    cap: int = 64,
) -> int:
    """Elements per batch: a fixed default on the CPU, a one-step memory probe on CUDA."""
    device = torch.device(device)
    if device.type != "cuda":
        return CPU_BATCH_SIZE
    probe = 2
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    steps = optimise(
        model,
        objective,
        units=[0] * probe,
        seeds=[(0, k) for k in range(probe)],
        preprocess=preprocess,
        steps=1,
        size=size,
        groups=[0] * probe,
        device=device,
    )
    for _ in steps:
        pass
    per_element = max(1, (torch.cuda.max_memory_allocated(device) - base) // probe)
    free, _total = torch.cuda.mem_get_info(device)
    # Keep headroom for allocator fragmentation and the evaluation pass.
    return int(max(1, min(cap, 0.6 * free // per_element)))


def render_units(
    model: nn.Module,
    module_path: str,
    layout: Layout,
    units: Sequence[int],
    *,
    preprocess: PreprocessConfig,
    objective: str = DEFAULT_OBJECTIVE,
    steps: int = 512,
    size: int = 128,
    seed: int = 0,
    lr: float = 0.05,
    batch_size: int | None = None,
    transforms: TransformConfig | None = None,
    facet: FacetProbe | None = None,
    facet_layer: str | None = None,
    facet_strength: float = 5.0,
    progress: Callable[[int, int], None] | None = None,
    device: torch.device | str = "cpu",
    channels_last: bool = True,
    fold_bn: bool = True,
    top: int | None = CHANNEL_TOP,
) -> list[RenderResult]:
    """Render ``units`` of ``module_path``, many units per batch; one result per unit."""
    cfg = transforms or TransformConfig()
    goal = build_objective(
        objective,
        module_path,
        layout,
        facet=facet,
        facet_layer=facet_layer,
        facet_strength=facet_strength,
        top=top,
    )
    per_unit = DIVERSITY_IMAGES if objective == "diversity" else 1
    # Every batch element: (position of its unit in ``units``, unit, image index in its set).
    elements = [(j, u, k) for j, u in enumerate(units) for k in range(per_unit)]
    params: dict[str, object] = {
        "code": CODE_VERSION,
        "objective": objective,
        "top_positions": top if objective in TOP_OBJECTIVES else None,
        "steps": steps,
        "size": size,
        "lr": lr,
        "decay": 1.0,
        "transforms": cfg.as_dict(),
        "input_size": list(input_hw(preprocess)),
        "mean": list(preprocess.mean),
        "std": list(preprocess.std),
    }
    if facet is not None:
        params["facet"] = {
            "layer": facet_layer or facet.layer,
            "strength": facet_strength,
            "l2": FACET_L2_WEIGHT,
            "probe_accuracy": facet.accuracy,
        }
    pils: list[Image.Image] = []
    acts_max: list[float] = []
    acts_mean: list[float] = []
    if fold_bn:
        reads = [module_path] + ([facet_layer or facet.layer] if facet is not None else [])
        model, _ = fold_batchnorm(model, reads, input_hw(preprocess)[0])
    with frozen(model, channels_last=channels_last):
        n_batch = batch_size or auto_batch_size(model, goal, preprocess, size, device)
        # Keep a unit's diverse images in one batch: diversity compares them with each other.
        n_batch = max(per_unit, n_batch - n_batch % per_unit)
        chunks = [elements[i : i + n_batch] for i in range(0, len(elements), n_batch)]
        total = steps * len(chunks)
        for ci, chunk in enumerate(chunks):
            chunk_units = [u for _, u, _ in chunk]
            last = None
            for last in optimise(
                model,
                goal,
                units=chunk_units,
                seeds=[(seed, k) for _, _, k in chunk],
                groups=[j for j, _, _ in chunk],
                preprocess=preprocess,
                steps=steps,
                size=size,
                lr=lr,
                transforms=cfg,
                device=device,
                channels_last=channels_last,
            ):
                if progress is not None:
                    progress(ci * steps + last.step, total)
            if last is None:  # steps == 0: the initial images
                init = FourierImage([element_seeds(seed, u, k)[0] for _, u, k in chunk], size)
                images = init().detach()
            else:
                images = last.images()
            chunk_pils = to_pil(images)
            # Score what is stored: the 8-bit image, as dataset examples are scored.
            a_max, a_mean = evaluate_units(
                model, module_path, layout, chunk_units, from_pil(chunk_pils).to(device), preprocess
            )
            pils += chunk_pils
            acts_max += a_max.tolist()
            acts_mean += a_mean.tolist()
    results = []
    for j, u in enumerate(units):
        sl = slice(j * per_unit, (j + 1) * per_unit)
        results.append(
            RenderResult(
                unit=u,
                images=pils[sl],
                acts_max=acts_max[sl],
                acts_mean=acts_mean[sl],
                seed=seed,
                params=params,
            )
        )
    return results
