"""Rendering a unit's dataset-example sheets: the previous serial loop against ours.

After the top-k is known, mining draws every unit's receptive-field crops and heatmaps (top
and negative, 16 each) and encodes the sheets: on a CPU-only machine, and on a GPU worker whose
forward passes are quick, this is most of a mining job. Baseline: one unit after another with
the colour map looked up in numpy (the code before). Ours: the product's ``render_unit`` on
``RENDER_THREADS`` drawing threads (one: several convoy on the GIL, workers/ml/sheets.py)
with Pillow's palette lookup, heatmaps drawn over each crop only. Both draw the same units
from the same mined results of the default model on the demo photos; publishing (store and
database) is left out of both. Ends with one JSON line.

    .venv/bin/python benchmarks/mining_render.py [--units 256]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import workers.ml.render as render
from workers.ml.demo_data import assemble_demo_dataset
from workers.ml.images import list_images, load_rgb
from workers.ml.layers import enumerate_layers
from workers.ml.mining import Miner
from workers.ml.models import load_model
from workers.ml.preprocess import to_batch
from workers.ml.receptive_field import receptive_field
from workers.ml.sheets import (
    RENDER_CHUNK,
    RENDER_THREADS,
    SHOWN,
    example_views,
    kept_unit_maps,
    render_unit,
)

DEMO = Path("/tmp/up1/datasets/demo")
BATCH = 32
LAYERS = ("blocks.3", "blocks.5", "conv_head")  # small, mid and full receptive fields


def numpy_colorize(values: Image.Image) -> Image.Image:
    """The colour map as it was: numpy rounding and LUT indexing."""
    idx = np.clip(np.round(np.asarray(values) * 255), 0, 255).astype(np.int64)
    return Image.fromarray(render.VIRIDIS[idx])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--units", type=int, default=96, help="units per layer")
    ap.add_argument("--images", type=int, default=256)
    args = ap.parse_args()
    torch.set_num_threads(2)
    root = DEMO if DEMO.is_dir() else Path(tempfile.mkdtemp())
    if root != DEMO:
        assemble_demo_dataset(root)
    files = list_images(root)[: args.images]
    loaded = load_model("default")
    net, cfg = loaded.image_model, loaded.preprocess
    infos = {i.name: i for i in enumerate_layers(loaded)}
    layouts = {infos[n].module_path: infos[n].layout for n in LAYERS}
    imgs = [load_rgb(f) for f in files]
    batches = [
        (to_batch(imgs[i : i + BATCH], cfg), torch.arange(i, min(i + BATCH, len(imgs))))
        for i in range(0, len(imgs), BATCH)
    ]
    reducers = Miner(layouts, maps=SHOWN).run(net, batches)
    results = {p: r.finalize() for p, r in reducers.items()}
    jobs = [(p, u) for p, res in results.items() for u in range(min(args.units, res.unit_count))]
    # Every unit map a sheet shows (kept while mining, as the mining job keeps them).
    unit_maps = kept_unit_maps(results, jobs)
    chunks = (
        (list(range(i, min(i + BATCH, len(imgs)))), imgs[i : i + BATCH])
        for i in range(0, len(imgs), BATCH)
    )
    views = example_views(chunks, cfg)
    s = cfg.input_size
    fields = {p: receptive_field(net, p, layouts[p], s) for p in layouts}

    def draw(job: tuple[str, int]) -> int:
        p, u = job
        drawn = render_unit(results[p].unit(u), p, u, views, unit_maps, fields[p], s)
        return sum(len(d.crops) + len(d.heatmaps) for d in drawn.values())

    figures = {}
    palette = render.colorize
    render.colorize = numpy_colorize
    try:
        t0 = time.perf_counter()
        base_bytes = sum(draw(j) for j in jobs)
        figures["baseline_ms_per_unit"] = (time.perf_counter() - t0) * 1000 / len(jobs)
    finally:
        render.colorize = palette
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=RENDER_THREADS) as pool:
        ours_bytes = 0
        for first in range(0, len(jobs), RENDER_CHUNK):
            ours_bytes += sum(pool.map(draw, jobs[first : first + RENDER_CHUNK]))
    figures["ours_ms_per_unit"] = (time.perf_counter() - t0) * 1000 / len(jobs)
    print(
        json.dumps(
            {
                "bench": "mining_render",
                "units": len(jobs),
                "layers": list(LAYERS),
                "threads": RENDER_THREADS,
                "baseline_ms_per_unit": round(figures["baseline_ms_per_unit"], 2),
                "ours_ms_per_unit": round(figures["ours_ms_per_unit"], 2),
                "speedup": round(figures["baseline_ms_per_unit"] / figures["ours_ms_per_unit"], 2),
                # Same sheets either way, up to JPEG noise from rare rounding ties.
                "bytes_ratio": round(ours_bytes / base_bytes, 4),
            }
        )
    )


if __name__ == "__main__":
    main()
