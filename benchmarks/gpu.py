"""GPU throughput of mining and feature visualization on the default model.

On a CUDA machine, side by side on the same batches:
- mining: the raw forward pass (no hooks) against the product's ``Miner`` over the default
  layers (all units), in images/s, at each batch size; the best batch size is the one where
  the Miner is fastest. Both in float32 and under autocast (bfloat16); the mixed-precision
  figure counts only if its top-k agrees with float32's within ``TOP_K_OVERLAP``.
- feature visualization: ``render_units`` (the product's renderer, ``--steps`` steps) on one
  default layer, units/s at batch 32 and above, float32 and under autocast; mixed precision
  counts only if its renders drive their units (scored in float32) within ``ACT_RATIO`` of the
  float32 renders' activations.

Without CUDA it says "no CUDA" and ends with its JSON line all the same. Ends with one JSON line.

    .venv/bin/python benchmarks/gpu.py                      # on a CUDA machine (~5 min)
    .venv/bin/python benchmarks/gpu.py --cpu-smoke          # the same code, tiny, on the CPU
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

TOP_K_OVERLAP = 0.95  # share of each unit's top-k image ids that must match float32's
ACT_RATIO = 0.95  # median activation of mixed-precision renders over float32's, at least


def photos_batch(n: int, preprocess: Any, first: int = 0) -> torch.Tensor:
    """Images first .. first + n - 1: crops of scikit-image's photos seeded by their number,
    preprocessed: (n, 3, S, S)."""
    import numpy as np
    import skimage.data
    from PIL import Image

    from workers.ml.preprocess import to_batch

    names = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "retina")
    photos = [Image.fromarray(getattr(skimage.data, name)()).convert("RGB") for name in names]
    crops = []
    for i in range(first, first + n):
        rng = np.random.default_rng(i)
        p = photos[i % len(photos)]
        side = int(min(p.size) * rng.uniform(0.3, 1.0))
        left = int(rng.integers(0, p.width - side + 1))
        top = int(rng.integers(0, p.height - side + 1))
        crops.append(p.crop((left, top, left + side, top + side)))
    return to_batch(crops, preprocess)


def precision(device: torch.device, dtype: torch.dtype | None) -> Any:
    """Autocast to ``dtype`` on the device, or float32 as it is when None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def timed(device: torch.device, repeat: int, fn: Callable[..., object], *args: Any) -> float:
    """Seconds per call of ``fn(*args)``, after one warm-up call, synchronised with the device."""
    fn(*args)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeat):
        fn(*args)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / repeat


def forward(model: torch.nn.Module, x: torch.Tensor, autocast: Any) -> None:
    """The raw forward pass, no hooks."""
    with torch.inference_mode(), autocast:
        model(x)


def top_ids(miner: Any) -> dict[str, torch.Tensor]:
    """Each mined layer's top-k image ids per unit."""
    return {path: r.finalize().top_ids for path, r in miner.reducers.items()}


def overlap(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Mean over units of the share of top-k image ids the two runs share."""
    shares = []
    for path, ids in a.items():
        for row_a, row_b in zip(ids.tolist(), b[path].tolist(), strict=True):
            shares.append(len(set(row_a) & set(row_b)) / max(1, len(row_a)))
    return statistics.fmean(shares)


def bench_mining(
    loaded: Any, device: torch.device, batches: list[int], images: int, repeat: int
) -> dict[str, object]:
    from workers.ml.layers import enumerate_layers
    from workers.ml.mining import Miner

    model = loaded.image_model.to(device).eval()
    layers = {i.module_path: i.layout for i in enumerate_layers(loaded) if i.default}
    pool = photos_batch(max(batches), loaded.preprocess).to(device)
    rows: list[dict[str, float]] = []
    for b in batches:
        x, ids = pool[:b], torch.arange(b)
        row: dict[str, float] = {"batch": b}
        for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
            miner = Miner(layers, autocast_dtype=dtype)
            raw = timed(device, repeat, forward, model, x, precision(device, dtype))
            row[f"raw_{name}_images_s"] = b / raw
            row[f"mine_{name}_images_s"] = b / timed(device, repeat, miner.update, model, x, ids)
        rows.append(row)
    # Mixed precision's top-k against float32's, over the same `images` images.
    runs = {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        miner = Miner(layers, autocast_dtype=dtype)
        step = max(batches)
        for start in range(0, images, step):
            n = min(step, images - start)
            batch = photos_batch(n, loaded.preprocess, first=start)
            miner.update(model, batch, torch.arange(start, start + n))
        runs[name] = top_ids(miner)
    agree = overlap(runs["fp32"], runs["bf16"])
    amp_ok = agree >= TOP_K_OVERLAP

    def fastest(r: dict[str, float]) -> float:
        return max(r["mine_fp32_images_s"], r["mine_bf16_images_s"] if amp_ok else 0.0)

    best = max(rows, key=fastest)
    use = "bf16" if amp_ok and best["mine_bf16_images_s"] > best["mine_fp32_images_s"] else "fp32"
    return {
        "mining_best_batch": int(best["batch"]),
        "mining_precision": use,
        "mining_images_s": round(best[f"mine_{use}_images_s"], 1),
        "raw_forward_images_s": round(best[f"raw_{use}_images_s"], 1),
        "mining_over_raw": round(best[f"mine_{use}_images_s"] / best[f"raw_{use}_images_s"], 3),
        "mining_bf16_topk_overlap": round(agree, 4),
        "mining_by_batch": [{k: round(v, 1) for k, v in r.items()} for r in rows],
    }


def bench_featvis(
    loaded: Any, device: torch.device, batches: list[int], steps: int
) -> dict[str, object]:
    from workers.ml.featvis.render import evaluate_units, render_units
    from workers.ml.featvis.transforms import from_pil
    from workers.ml.layers import enumerate_layers

    model = loaded.image_model.to(device).eval()
    infos = [i for i in enumerate_layers(loaded) if i.default]
    layer = infos[len(infos) // 2]  # a middle default layer
    out: dict[str, object] = {"featvis_layer": layer.name, "featvis_steps": steps}
    per_batch = []
    acts: dict[str, list[float]] = {}
    for b in batches:
        units = [u % layer.unit_count for u in range(b)]
        row: dict[str, float] = {"batch": b}
        for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            with precision(device, dtype):
                results = render_units(
                    model,
                    layer.module_path,
                    layer.layout,
                    units,
                    preprocess=loaded.preprocess,
                    steps=steps,
                    batch_size=b,
                    device=device,
                )
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            row[f"{name}_units_s"] = b / (time.perf_counter() - start)
            # Score every render in float32, whatever precision made it.
            images = from_pil([r.images[0] for r in results]).to(device)
            act, _ = evaluate_units(
                model, layer.module_path, layer.layout, units, images, loaded.preprocess
            )
            acts.setdefault(name, []).extend(act.tolist())
        per_batch.append(row)
    ratios = [a / f for a, f in zip(acts["bf16"], acts["fp32"], strict=True) if f > 0]
    ratio = statistics.median(ratios) if ratios else 0.0
    amp_ok = ratio >= ACT_RATIO

    def fastest(r: dict[str, float]) -> float:
        return max(r["fp32_units_s"], r["bf16_units_s"] if amp_ok else 0.0)

    best = max(per_batch, key=fastest)
    use = "bf16" if amp_ok and best["bf16_units_s"] > best["fp32_units_s"] else "fp32"
    out.update(
        {
            "featvis_best_batch": int(best["batch"]),
            "featvis_precision": use,
            "featvis_units_s": round(best[f"{use}_units_s"], 2),
            "featvis_bf16_act_ratio": round(ratio, 3),
            "featvis_by_batch": [{k: round(v, 2) for k, v in r.items()} for r in per_batch],
        }
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="32,64,128,256,512", help="mining batch sizes")
    ap.add_argument("--featvis-batches", default="32,64,128")
    ap.add_argument("--steps", type=int, default=512, help="feature-visualization steps")
    ap.add_argument("--images", type=int, default=2048, help="images for the top-k check")
    ap.add_argument("--repeat", type=int, default=10, help="timed calls per batch size")
    ap.add_argument("--cpu-smoke", action="store_true", help="run tiny on the CPU (a check)")
    args = ap.parse_args()
    result: dict[str, object] = {"bench": "gpu", "cuda": torch.cuda.is_available()}
    if args.cpu_smoke:
        device = torch.device("cpu")
        torch.set_num_threads(2)
        mining_batches, featvis_batches = [4, 8], [4]
        args.steps, args.images, args.repeat = 4, 16, 1
    elif torch.cuda.is_available():
        device = torch.device("cuda")
        mining_batches = [int(b) for b in args.batches.split(",")]
        featvis_batches = [int(b) for b in args.featvis_batches.split(",")]
        result["device"] = torch.cuda.get_device_name(device)
        torch.backends.cudnn.benchmark = True
    else:
        print("no CUDA: nothing to measure on this machine (run it where torch sees a GPU)")
        result["note"] = "no CUDA"
        print(json.dumps(result))
        return

    from workers.ml.models import load_model

    loaded = load_model("default")
    result.update(bench_mining(loaded, device, mining_batches, args.images, args.repeat))
    print(
        f"mining: {result['mining_images_s']} images/s at batch {result['mining_best_batch']} "
        f"({result['mining_precision']}), raw forward {result['raw_forward_images_s']}, "
        f"ratio {result['mining_over_raw']}; "
        f"bf16 top-k overlap {result['mining_bf16_topk_overlap']}"
    )
    result.update(bench_featvis(loaded, device, featvis_batches, args.steps))
    print(
        f"featvis: {result['featvis_units_s']} units/s at batch {result['featvis_best_batch']} "
        f"({result['featvis_precision']}, {args.steps} steps); "
        f"bf16 activation ratio {result['featvis_bf16_act_ratio']}"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
