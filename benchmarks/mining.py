"""Dataset-example mining throughput and memory on the CPU, default model.

Compares, on the same images: (a) the plain forward pass with no hooks, (b) the streaming
Miner over the default layers (all units), (c) a naive baseline that keeps every activation
in numpy and sorts at the end. Peak RSS of the Miner over N and 4N images is measured in fresh
child processes so each peak is its own. Ends with one JSON line.

    .venv/bin/python benchmarks/mining.py --images 256
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from contracts.layout import Layout
from workers.ml.hooks import capture, to_unit_maps
from workers.ml.layers import enumerate_layers
from workers.ml.mining import Miner
from workers.ml.models import LoadedModel, PreprocessConfig, load_model
from workers.ml.preprocess import to_batch

BATCH = 32
THREADS = 2
MIN_LAYERS = 5
DEMO_DIRS = (Path.home() / ".local/share/microscope", Path("data/datasets/demo"))
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def source_photos() -> list[Image.Image]:
    """Demo photos if a demo folder exists, else scikit-image's and scikit-learn's photos."""
    for d in DEMO_DIRS:
        if d.is_dir():
            files = sorted(p for p in d.rglob("*") if p.suffix.lower() in PHOTO_SUFFIXES)
            if files:
                return [Image.open(p).convert("RGB") for p in files[:64]]
    import skimage.data
    from sklearn.datasets import load_sample_images

    names = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "retina")
    photos = [Image.fromarray(getattr(skimage.data, n)()).convert("RGB") for n in names]
    photos += [Image.fromarray(a) for a in load_sample_images().images]
    return photos


def image_at(photos: list[Image.Image], i: int) -> Image.Image:
    """Image i: a deterministic random crop (30-100% of the short side) of one photo."""
    rng = np.random.default_rng(i)
    p = photos[i % len(photos)]
    side = int(min(p.size) * rng.uniform(0.3, 1.0))
    left = int(rng.integers(0, p.width - side + 1))
    top = int(rng.integers(0, p.height - side + 1))
    crop = p.crop((left, top, left + side, top + side))
    return crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else crop


def lazy_batches(
    photos: list[Image.Image], n: int, cfg: PreprocessConfig
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of (images (B, 3, S, S), ids (B,)) built on the fly: memory independent of n."""
    for start in range(0, n, BATCH):
        ids = list(range(start, min(start + BATCH, n)))
        yield to_batch([image_at(photos, i) for i in ids], cfg), torch.tensor(ids)


def mined_layers(loaded: LoadedModel) -> dict[str, Layout]:
    """The default layers, topped up with evenly spaced others to at least MIN_LAYERS."""
    infos = enumerate_layers(loaded)
    chosen = [info for info in infos if info.default]
    rest = [info for info in infos if not info.default]
    while len(chosen) < MIN_LAYERS and rest:
        chosen.append(rest.pop(len(rest) // 2))
    chosen.sort(key=lambda info: info.order)
    return {info.module_path: info.layout for info in chosen}


class Naive:
    """Every activation to numpy, all kept; per-unit max/argmax and a full sort at the end."""

    def __init__(self, layers: dict[str, Layout], k: int = 64) -> None:
        self.layers = layers
        self.k = k
        self.kept: dict[str, list[np.ndarray]] = {p: [] for p in layers}

    def update(self, model: torch.nn.Module, x: torch.Tensor) -> None:
        with torch.inference_mode(), capture(model, list(self.layers)) as store:
            model(x)
            for p, layout in self.layers.items():
                self.kept[p].append(to_unit_maps(store[p], layout).numpy().copy())

    @property
    def kept_mb(self) -> float:
        return sum(a.nbytes for arrays in self.kept.values() for a in arrays) / 2**20

    def finish(self) -> None:
        for p in self.layers:
            acts = np.concatenate(self.kept[p])  # (N, U, H, W)
            flat = acts.reshape(acts.shape[0], acts.shape[1], -1)  # (N, U, HW)
            scores = flat.max(axis=2)  # (N, U)
            flat.argmax(axis=2)  # (N, U) positions
            np.argsort(-scores, axis=0, kind="stable")[: self.k]  # (k, U)


def compare(
    model: torch.nn.Module, data: list[tuple[torch.Tensor, torch.Tensor]], layers: dict[str, Layout]
) -> tuple[float, float, float, float]:
    """Seconds spent by raw, ours and naive over the data, and the MB naive kept.

    The three run interleaved batch by batch, so load from other processes sharing the CPU
    falls on all of them alike instead of on whichever ran during a busy spell.
    """
    miner, naive = Miner(layers), Naive(layers)
    t = {"raw": 0.0, "ours": 0.0, "naive": 0.0}
    for x, ids in data:
        t0 = time.perf_counter()
        with torch.inference_mode():
            model(x)
        t1 = time.perf_counter()
        miner.update(model, x, ids)
        t2 = time.perf_counter()
        naive.update(model, x)
        t3 = time.perf_counter()
        t["raw"] += t1 - t0
        t["ours"] += t2 - t1
        t["naive"] += t3 - t2
    t0 = time.perf_counter()
    for reducer in miner.reducers.values():
        reducer.finalize()
    t1 = time.perf_counter()
    naive.finish()
    t2 = time.perf_counter()
    return t["raw"], t["ours"] + (t1 - t0), t["naive"] + (t2 - t1), naive.kept_mb


def child_peak_rss(n: int) -> float:
    """Mine n lazily built images in this process; return its peak RSS in MB."""
    torch.set_num_threads(THREADS)
    loaded = load_model("default")
    layers = mined_layers(loaded)
    batches = lazy_batches(source_photos(), n, loaded.preprocess)
    for reducer in Miner(layers).run(loaded.image_model, batches).values():
        reducer.finalize()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def peak_rss_in_fresh_process(n: int) -> float:
    out = subprocess.run(
        [sys.executable, __file__, "--child-rss", str(n)],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": str(THREADS)},
    )
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=256, help="N (the RSS runs use N and 4N)")
    ap.add_argument("--child-rss", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_rss is not None:
        print(child_peak_rss(args.child_rss))
        return

    torch.set_num_threads(THREADS)
    n = args.images
    loaded = load_model("default")
    model = loaded.image_model
    layers = mined_layers(loaded)
    photos = source_photos()
    data = list(lazy_batches(photos, n, loaded.preprocess))  # the same tensors for all methods
    warm = Miner(layers).run(model, data[:1])  # also warms the plain forward's kernels
    units = sum(r.state.unit_count for r in warm.values() if r.state)
    print(f"model {loaded.spec}: {len(layers)} layers, {units} units: {', '.join(layers)}")
    print(f"{n} images from {len(photos)} photos, batch {BATCH}, {THREADS} threads")

    raw_s, ours_s, naive_s, naive_mb = compare(model, data, layers)
    del data
    result = {
        "bench": "mining",
        "raw_img_s": round(n / raw_s, 2),
        "ours_img_s": round(n / ours_s, 2),
        "naive_img_s": round(n / naive_s, 2),
        "ratio_ours_raw": round(raw_s / ours_s, 3),
        "peak_rss_mb_1x": round(peak_rss_in_fresh_process(n), 1),
        "peak_rss_mb_4x": round(peak_rss_in_fresh_process(4 * n), 1),
    }
    for key in ("raw_img_s", "ours_img_s", "naive_img_s"):
        print(f"{key:>16}: {result[key]}")
    print(f"naive kept {naive_mb:.0f} MB of activations (grows with N); ours keeps O(k + R)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
