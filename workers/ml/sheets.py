"""A unit's example sheets: its top and most negative dataset examples as receptive-field crops
and activation heatmaps on a grid, drawn from the mined results.

The heatmaps draw the unit maps kept while mining (``workers/ml/kept_maps.py``), so no image
is run through the model again; only the images a sheet shows are decoded again, and every
drawing takes the model-view image (``preprocess.model_view``), so map positions and
receptive-field boxes fall on the pixels the model saw.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from functools import partial
from typing import TypeVar, cast

import torch
from PIL import Image
from torch import nn

from contracts.artifacts import DatasetExamples
from contracts.layout import Layout
from workers.ml.images import jpeg_bytes
from workers.ml.layer_result import LayerResult
from workers.ml.models import PreprocessConfig
from workers.ml.preprocess import model_view
from workers.ml.receptive_field import RF, receptive_field
from workers.ml.render import crop_example, heatmap_tile

SHOWN = 16  # examples drawn on each sheet
COLS = 4  # sheets are COLS tiles wide
CELL = 112  # px per tile on a sheet
THUMB = 96  # px of the grid thumbnail (the best example's crop)
CARD_TILES = 6  # top examples a neuron card shows
# Drawing is many short Pillow calls that each release and retake the GIL: threads convoy on
# it. Where the machine allows, units are drawn in forked processes, one per core
# (``draw_units``); else on one thread beside the task's own (two threads were slower than
# one), with the puts on I/O threads (workers/tasks/artifacts.py WriteBehind). Merging and
# publishing 424 units of 1,000 mined images on 2 cores: one thread 7.3 s, two processes
# 5.0 s (``benchmarks/mining_scale.py --small 1000 --large 2000 --render-processes 1``, then
# without the flag). Chunks bound the memory held.
RENDER_THREADS = 1
RENDER_PROCESSES = os.cpu_count() or 1
RENDER_CHUNK = 64
# A render block's bounds: the images whose views and unit maps it holds, and its units (with
# 2,048 images the render added 157 MB to the peak RSS of mining 100k images at 64 px).
BLOCK_IMAGES = 1024
BLOCK_UNITS = 256

T = TypeVar("T")
Shown = dict[int, set[tuple[str, int]]]  # image id -> the (layer path, unit) sheets showing it
UnitMaps = dict[tuple[str, int, int], torch.Tensor]  # (layer path, unit, image id) -> (H, W)


def fit(tile: Image.Image, cell: int) -> Image.Image:
    """One resize to cell x cell: hard-edged when enlarging tiny receptive fields."""
    if tile.size == (cell, cell):
        return tile
    if max(tile.size) < cell:
        return tile.resize((cell, cell), Image.Resampling.NEAREST)
    return tile.resize((cell, cell), Image.Resampling.BILINEAR, reducing_gap=2.0)


def sheet(tiles: Sequence[Image.Image], cols: int = COLS, cell: int = CELL) -> Image.Image:
    """Tiles (resized to cell x cell) on a grid, row-major."""
    rows = max(1, (len(tiles) + cols - 1) // cols)
    out = Image.new("RGB", (cols * cell, rows * cell), (24, 24, 24))
    for i, t in enumerate(tiles):
        out.paste(fit(t, cell), ((i % cols) * cell, (i // cols) * cell))
    return out


def shown_images(
    results: Mapping[str, LayerResult], units: Iterable[tuple[str, int]] | None = None
) -> Shown:
    """Which images the sheets of ``units`` ((layer path, unit) pairs; None: every unit of
    every layer) show, top and negative."""
    if units is None:
        units = ((path, u) for path, res in results.items() for u in range(res.unit_count))
    wanted: Shown = defaultdict(set)
    for path, u in units:
        for i in _shown_ids(results[path], u):
            wanted[i].add((path, u))
    return wanted


def _shown_ids(res: LayerResult, u: int) -> list[int]:
    return [
        i
        for ids in (res.top_ids, res.neg_ids)
        if ids is not None
        for i in ids[u, :SHOWN].tolist()
        if i >= 0
    ]


def render_blocks(results: Mapping[str, LayerResult]) -> Iterator[list[tuple[str, int]]]:
    """Every (layer path, unit) in order, in blocks whose sheets show at most BLOCK_IMAGES
    distinct images (and hold at most BLOCK_UNITS units): what one block holds in memory does
    not grow with the dataset, and an image shown by several units of a block is decoded and
    run through the model once."""
    block: list[tuple[str, int]] = []
    images: set[int] = set()
    for path, res in results.items():
        for u in range(res.unit_count):
            shown = set(_shown_ids(res, u))
            grown = len(images) + len(shown - images)
            if block and (len(block) == BLOCK_UNITS or grown > BLOCK_IMAGES):
                yield block
                block, images = [], set()
            block.append((path, u))
            images |= shown
    if block:
        yield block


def example_views(
    batches: Iterable[tuple[Sequence[int], Sequence[Image.Image]]], cfg: PreprocessConfig
) -> dict[int, Image.Image]:
    """The model-view image of every shown image, by id.

    ``batches``: (image ids, decoded images) of the shown images, a batch at a time.
    """
    return {
        i: model_view(im, cfg) for ids, imgs in batches for i, im in zip(ids, imgs, strict=True)
    }


def kept_unit_maps(
    results: Mapping[str, LayerResult], units: Iterable[tuple[str, int]]
) -> UnitMaps:
    """The maps the sheets of ``units`` draw, from the maps kept while mining."""
    out: UnitMaps = {}
    for path, u in units:
        res = results[path]
        if res.top_maps is None or res.top_maps.shape[1] < min(SHOWN, res.top_ids.shape[1]):
            raise ValueError(f"layer {path} was mined without the maps of {SHOWN} examples")
        for ids, maps in ((res.top_ids, res.top_maps), (res.neg_ids, res.neg_maps)):
            if ids is None or maps is None:
                continue
            for j, i in enumerate(ids[u, :SHOWN].tolist()):
                if i >= 0:
                    out[(path, u, i)] = maps[u, j]  # (H, W); the same map in either group
    return out


@dataclass
class DrawnGroup:
    """One group's (top or negative) sheets of a unit, encoded."""

    crops: bytes
    heatmaps: bytes
    image_ids: list[int]
    thumb: bytes | None  # top group only
    card_tiles: list[Image.Image]  # top group only: the card's examples


def render_unit(
    index: DatasetExamples,
    path: str,
    unit: int,
    views: Mapping[int, Image.Image],
    unit_maps: UnitMaps,
    rf: RF,
    size: int,
) -> dict[str, DrawnGroup]:
    """A unit's example sheets (receptive-field crops and heatmaps), per group; records each
    example's box and the input size in ``index``. No database or store: safe to run on
    several threads."""
    index.input_size = size
    out = {}
    for group, examples in (("top", index.top), ("negative", index.negative or [])):
        for ex in examples:
            ex.box = rf.box(ex.y, ex.x, size)
        shown = [e for e in examples[:SHOWN] if (path, unit, e.image_id) in unit_maps]
        if not shown:
            continue
        crops, heats = [], []
        for e in shown:
            assert e.box is not None
            view = views[e.image_id]
            crops.append(crop_example(view, e.box))
            umap = unit_maps[(path, unit, e.image_id)]
            # Negative examples: highlight where the unit is most negative. Drawn at the
            # crop's size (at most the view's), then fitted to the cell like the crop.
            heats.append(
                heatmap_tile(crops[-1], umap if group == "top" else -umap, e.box, view.size)
            )
        top = group == "top"
        out[group] = DrawnGroup(
            crops=jpeg_bytes(sheet(crops)),
            heatmaps=jpeg_bytes(sheet(heats)),
            image_ids=[e.image_id for e in shown],
            thumb=jpeg_bytes(fit(crops[0], THUMB)) if top else None,
            card_tiles=crops[:CARD_TILES] if top else [],
        )
    return out


Decode = Callable[[list[int]], Iterable[tuple[Sequence[int], Sequence[Image.Image]]]]
# What the caller does with a drawn unit on the drawing thread (e.g. store its bytes):
# (layer path, unit, its examples index, its sheets) -> what draw_units yields for it.
Then = Callable[[str, int, DatasetExamples, dict[str, "DrawnGroup"]], T]


# The block being drawn, set before the drawing processes fork: they inherit it (views, maps,
# results, the caller's ``then``) instead of receiving it pickled.
_BLOCK: Callable[[tuple[str, int]], object] | None = None


def _draw_inherited(unit: tuple[str, int]) -> object:
    assert _BLOCK is not None
    return _BLOCK(unit)


def _drawing_process() -> None:
    """A forked drawing process: one torch thread (an OpenMP pool does not survive a fork)
    and default signals (not the worker's handlers)."""
    torch.set_num_threads(1)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def drawing_processes() -> int:
    """How many processes ``draw_units`` may fork: none inside a daemonic process (a Celery
    prefork child may not have children) or where fork is missing, or on one core."""
    if multiprocessing.current_process().daemon:
        return 0
    if "fork" not in multiprocessing.get_all_start_methods():
        return 0
    return RENDER_PROCESSES if RENDER_PROCESSES > 1 else 0


def draw_units(
    pool: Executor,
    model: nn.Module,
    layouts: Mapping[str, Layout],
    results: Mapping[str, LayerResult],
    decode: Decode,
    cfg: PreprocessConfig,
    then: Then[T],
    processes: int = 0,
) -> Iterator[T]:
    """``then``'s result for every unit, in order, a block (``render_blocks``) at a time: the
    block's shown images are decoded (``decode``: their ids -> batches of (ids, images)),
    then its units are drawn from them and their kept maps (``results`` must keep them), and
    passed to ``then``, on ``pool``'s threads a chunk at a time, or with ``processes`` > 1 in
    that many processes forked per block (``then`` then runs there: it must not use this
    process's threads, sessions or clients, and what it returns is pickled back). ``model``
    only gives the layers' receptive fields."""
    size = cfg.input_size
    fields: dict[str, RF] = {}
    for block in render_blocks(results):
        paths = list(dict.fromkeys(p for p, _ in block))
        for p in paths:
            if p not in fields:
                fields[p] = receptive_field(model, p, layouts[p], size)
        unit_maps = kept_unit_maps(results, block)
        views = example_views(decode(sorted(shown_images(results, block))), cfg)
        draw = partial(_draw, results, views, unit_maps, fields, size, then)
        if processes > 1:
            yield from _in_processes(draw, block, processes)
            continue
        for first in range(0, len(block), RENDER_CHUNK):
            yield from pool.map(draw, block[first : first + RENDER_CHUNK])


def _in_processes(
    draw: Callable[[tuple[str, int]], T], block: list[tuple[str, int]], processes: int
) -> Iterator[T]:
    """``draw`` of every unit of ``block``, in order, in processes forked for the block."""
    global _BLOCK
    _BLOCK = draw
    try:
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(min(processes, len(block)), initializer=_drawing_process) as procs:
            yield from cast(Iterator[T], procs.imap(_draw_inherited, block, chunksize=4))
            procs.close()
            procs.join()
    finally:
        _BLOCK = None


def _draw(
    results: Mapping[str, LayerResult],
    views: Mapping[int, Image.Image],
    unit_maps: UnitMaps,
    fields: Mapping[str, RF],
    size: int,
    then: Then[T],
    unit: tuple[str, int],
) -> T:
    path, u = unit
    index = results[path].unit(u)
    return then(path, u, index, render_unit(index, path, u, views, unit_maps, fields[path], size))
