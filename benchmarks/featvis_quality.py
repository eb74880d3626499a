"""Feature-visualization quality against dataset examples, default model, default layers.

For units spread over every default layer of the default model, it mines each unit's best
dataset example over the demo photos (max over positions, the score mining ranks by), then
renders every unit at the product's default settings twice in one run: with the baseline
objective (``channel``: Lucent's plain spatial mean) and with ours (``channel_top16``: the
mean of the 16 strongest positions). The figure is the share of units whose render scores at
least its best example.

    .venv/bin/python benchmarks/featvis_quality.py [--units-per-layer 7] [--steps 512]

Ends with one JSON line: {"bench": "featvis_quality", "units": ..., "share_ge_1_ours": ...}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BATCH = 32


def pick_units(count: int, n: int) -> list[int]:
    """n units spread evenly over a layer."""
    return [int(i * count / n) for i in range(n)]


@torch.no_grad()
def best_examples(lm, layers, files: list[Path]) -> dict[str, torch.Tensor]:
    """Per layer, every unit's max over positions and photos, (U,), as mining scores them."""
    from workers.ml.hooks import run_to, to_unit_maps
    from workers.ml.preprocess import to_batch

    best: dict[str, torch.Tensor] = {}
    model = lm.image_model.eval()
    for i in range(0, len(files), BATCH):
        imgs = [Image.open(f).convert("RGB") for f in files[i : i + BATCH]]
        raw = run_to(model, to_batch(imgs, lm.preprocess), [li.module_path for li in layers])
        for li in layers:
            maps = to_unit_maps(raw[li.module_path], li.layout)  # (N, U, H, W)
            m = maps.flatten(2).amax(dim=2).amax(dim=0)  # (U,)
            prev = best.get(li.module_path)
            best[li.module_path] = m if prev is None else torch.maximum(prev, m)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--units-per-layer", type=int, default=7)
    ap.add_argument("--steps", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--photos", default="", help="a folder of photos (default: the demo set)")
    args = ap.parse_args()

    from workers.ml.demo_data import assemble_demo_dataset
    from workers.ml.featvis.render import render_units
    from workers.ml.layers import enumerate_layers
    from workers.ml.models import load_model

    torch.set_num_threads(args.threads)
    lm = load_model("default")
    layers = [li for li in enumerate_layers(lm) if li.default]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.photos) if args.photos else Path(tmp)
        if not args.photos:
            assemble_demo_dataset(folder)
        suffixes = (".jpg", ".jpeg", ".png", ".webp")
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in suffixes)
        t0 = time.perf_counter()
        best = best_examples(lm, layers, files)
    print(
        f"default model: {len(layers)} default layers; best examples over {len(files)} photos "
        f"in {time.perf_counter() - t0:.0f} s; {args.steps} steps at "
        f"{lm.preprocess.input_size} px",
        flush=True,
    )

    ratios: dict[str, list[float]] = {"baseline": [], "ours": []}
    seconds: dict[str, float] = {"baseline": 0.0, "ours": 0.0}
    for li in layers:
        units = pick_units(li.unit_count, args.units_per_layer)
        for name, objective in (("baseline", "channel"), ("ours", "channel_top16")):
            t0 = time.perf_counter()
            results = render_units(
                lm.image_model,
                li.module_path,
                li.layout,
                units,
                preprocess=lm.preprocess,
                steps=args.steps,
                size=int(lm.preprocess.input_size),  # what the render task uses
                objective=objective,
            )
            seconds[name] += time.perf_counter() - t0
            r = [res.act_max / float(best[li.module_path][res.unit]) for res in results]
            ratios[name] += r
            print(
                f"{li.name:12s} {name:8s} ratio to best example: "
                + " ".join(f"{x:5.2f}" for x in r),
                flush=True,
            )

    def share(xs: list[float]) -> float:
        return float(np.mean([x >= 1.0 for x in xs]))

    n = len(ratios["ours"])
    print(
        json.dumps(
            {
                "bench": "featvis_quality",
                "units": n,
                "layers": len(layers),
                "steps": args.steps,
                "share_ge_1_baseline": round(share(ratios["baseline"]), 3),
                "share_ge_1_ours": round(share(ratios["ours"]), 3),
                "median_ratio_baseline": round(statistics.median(ratios["baseline"]), 3),
                "median_ratio_ours": round(statistics.median(ratios["ours"]), 3),
                "min_ratio_ours": round(min(ratios["ours"]), 3),
                "s_per_unit_baseline": round(seconds["baseline"] / n, 2),
                "s_per_unit_ours": round(seconds["ours"] / n, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
