"""Feature visualization: our batched engine against Lucent 0.1.8, on the CPU.

Lucent runs in a subprocess with its own package dir (benchmarks/.lucent-pkgs, installed on
first use with pip --target; never a product dependency). Both sides' final images are scored
by our evaluator (8-bit image, model preprocessing, no transforms, unit's max over positions).

    .venv/bin/python benchmarks/featvis.py [--units-per-layer 4] [--steps 512] [--levers]

Ends with one JSON line: {"bench": "featvis", "lucent_s_per_unit": ..., ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LUCENT_DIR = ROOT / "benchmarks" / ".lucent-pkgs"
LUCENT_PKGS = [
    "torch-lucent==0.1.8",
    "kornia==0.4.1",
    "decorator",
    "future",
    "ipython",
    "traitlets",
    "pygments",
    "jedi",
    "parso",
    "prompt_toolkit",
    "wcwidth",
    "matplotlib-inline",
    "pexpect",
    "ptyprocess",
    "stack_data",
    "executing",
    "asttokens",
    "pure_eval",
    "ipython_pygments_lexers",
]


def ensure_lucent() -> None:
    """Install Lucent and its non-torch dependencies into LUCENT_DIR if absent."""
    if (LUCENT_DIR / "lucent").is_dir():
        return
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(LUCENT_DIR)]
    subprocess.run([*cmd, *LUCENT_PKGS], check=True)
    (LUCENT_DIR / ".gitignore").write_text("*\n")


def pick_units(count: int, n: int) -> list[int]:
    """n units spread evenly over a layer."""
    return [int(i * count / n) for i in range(n)]


def lucent_worker(args: argparse.Namespace) -> None:
    """Runs inside the Lucent subprocess: render each unit alone, save images and timings."""
    sys.path.insert(0, str(LUCENT_DIR))
    from lucent.optvis import objectives, render, transform

    from workers.ml.models import load_model

    torch.set_num_threads(args.threads)
    lm = load_model("default")
    model = lm.image_model.eval()
    mean = torch.tensor(lm.preprocess.mean)[:, None, None]
    std = torch.tensor(lm.preprocess.std)[:, None, None]
    # The model's own normalisation instead of Lucent's ImageNet one, so Lucent is not
    # handicapped by wrong preprocessing; order as Lucent's: transforms, normalise, upsample.
    transforms = [*transform.standard_transforms, lambda x: (x - mean) / std]
    out = []
    for spec in args.lucent_units.split(","):
        path, unit = spec.rsplit(":", 1)
        torch.manual_seed(int(unit))
        np.random.seed(int(unit))
        t0, c0 = time.perf_counter(), time.process_time()
        images = render.render_vis(
            model,
            objectives.channel(path.replace(".", "_"), int(unit)),
            transforms=transforms,
            preprocess=False,
            fixed_image_size=lm.preprocess.input_size,
            thresholds=(args.steps,),
            show_image=False,
            progress=False,
        )
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        out.append({"layer": path, "unit": int(unit), "seconds": seconds, "cpu": cpu})
        print(f"lucent render {path}:{unit} {seconds:.1f} s", flush=True)
        np.save(Path(args.out) / f"{path}_{unit}.npy", images[-1][0])  # (128, 128, 3) in [0,1]
    (Path(args.out) / "lucent.json").write_text(json.dumps(out))


def run_lucent(units: list[tuple[str, int]], steps: int, threads: int) -> list[dict]:
    """Lucent's seconds per unit and final image (float HWC), one unit per call."""
    ensure_lucent()
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            __file__,
            "--lucent-worker",
            "--out",
            tmp,
            "--steps",
            str(steps),
            "--threads",
            str(threads),
            "--lucent-units",
            ",".join(f"{p}:{u}" for p, u in units),
        ]
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        subprocess.run(cmd, check=True, env=env)
        rows = json.loads((Path(tmp) / "lucent.json").read_text())
        for r in rows:
            r["image"] = np.load(Path(tmp) / f"{r['layer']}_{r['unit']}.npy")
    return rows


def score(model, layer, layout, units, images: torch.Tensor, preprocess) -> np.ndarray:
    """Our evaluator on 8-bit copies of (N, 3, S, S) images: max over positions, (N,)."""
    from workers.ml.featvis.render import evaluate_units
    from workers.ml.featvis.transforms import to_pil
    from workers.ml.preprocess import from_pil

    a_max, _ = evaluate_units(model, layer, layout, units, from_pil(to_pil(images)), preprocess)
    return a_max.numpy()


def run_ours(model, layer, layout, units, preprocess, steps, size, eval_every):
    """One batch over ``units``: steps, wall and CPU seconds spent optimising, (E, N) acts."""
    from contracts.jobs import DEFAULT_OBJECTIVE
    from workers.ml.featvis.render import build_objective, optimise
    from workers.ml.featvis.transforms import frozen

    marks, elapsed, cpu, acts = [], [], [], []
    spent = spent_cpu = 0.0
    with frozen(model, channels_last=True):
        it = optimise(
            model,
            build_objective(DEFAULT_OBJECTIVE, layer, layout),  # the product's default
            units=units,
            seeds=[(0, 0)] * len(units),  # what render_units uses for seed=0
            preprocess=preprocess,
            steps=steps,
            size=size,
        )
        t0, c0 = time.perf_counter(), time.process_time()
        for state in it:
            if state.step % eval_every == 0 or state.step == steps:
                # Evaluation time is not counted.
                spent += time.perf_counter() - t0
                spent_cpu += time.process_time() - c0
                marks.append(state.step)
                elapsed.append(spent)
                cpu.append(spent_cpu)
                acts.append(score(model, layer, layout, units, state.images(), preprocess))
                t0, c0 = time.perf_counter(), time.process_time()
    return np.array(marks), np.array(elapsed), np.array(cpu), np.stack(acts)


def time_steps(model, goal, preprocess, n, size, steps=4, repeats=3, grads=False, cl=True):
    """Best-of-repeats seconds per step per unit for one optimise configuration."""
    from workers.ml.featvis.render import optimise
    from workers.ml.featvis.transforms import frozen

    best = float("inf")
    with frozen(model, channels_last=cl):
        if grads:
            for p in model.parameters():
                p.requires_grad_(True)
        for _ in range(repeats):
            it = optimise(
                model,
                goal,
                units=list(range(n)),
                seeds=[(0, 0)] * n,
                preprocess=preprocess,
                steps=steps + 1,
                size=size,
                channels_last=cl,
            )
            next(it)  # warm-up step
            t0 = time.perf_counter()
            for _ in it:
                pass
            best = min(best, (time.perf_counter() - t0) / steps / n)
    return best


def levers(model, layers, preprocess) -> None:
    """Print ms per step per unit as the speed levers are switched on one by one."""
    from workers.ml.featvis import objectives as obj

    rows = []
    for layer, layout in layers:
        own = obj.channel(layer, layout=layout)
        # A zero-weighted head term forces the whole network to run, as Lucent does.
        full = own + 0.0 * obj.channel("classifier", 0, layout=_nc())
        cases = [
            ("full forward, weight grads, NCHW, batch 1", full, 1, 128, True, False),
            ("+ no weight grads", full, 1, 128, False, False),
            ("+ truncated forward", own, 1, 128, False, False),
            ("+ channels_last", own, 1, 128, False, True),
            ("+ batch 8", own, 8, 128, False, True),
            ("  same, 224-px parameterization", own, 8, 224, False, True),
        ]
        for name, goal, n, size, grads, cl in cases:
            ms = 1000 * time_steps(model, goal, preprocess, n, size, grads=grads, cl=cl)
            rows.append((layer, name, ms))
            print(f"{layer:10s} {name:45s} {ms:7.1f} ms/step/unit", flush=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    layer, layout = layers[-1]
    ms = 1000 * time_steps(model, obj.channel(layer, layout=layout), preprocess, 8, 128)
    print(
        f"{layer:10s} {'batch 8, 1 thread instead of ' + str(threads):45s} {ms:7.1f} ms/step/unit"
    )
    torch.set_num_threads(threads)


def _nc():
    from contracts.layout import Layout

    return Layout("nc")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--units-per-layer", type=int, default=4)
    ap.add_argument("--steps", type=int, default=512)
    ap.add_argument("--layers", default="blocks.2,blocks.5")
    ap.add_argument(
        "--sizes", default="224", help="our parameterization sizes (224: the render default)"
    )
    ap.add_argument("--eval-every", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--levers", action="store_true", help="also print the speed-lever table")
    ap.add_argument("--lucent-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--lucent-units", default="", help=argparse.SUPPRESS)
    ap.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.lucent_worker:
        lucent_worker(args)
        return

    from workers.ml.layers import enumerate_layers
    from workers.ml.models import load_model

    torch.set_num_threads(args.threads)
    lm = load_model("default")
    model, pre = lm.image_model.eval(), lm.preprocess
    infos = {li.module_path: li for li in enumerate_layers(lm)}
    layers = [(p, infos[p].layout) for p in args.layers.split(",")]
    units = {p: pick_units(infos[p].unit_count, args.units_per_layer) for p, _ in layers}
    print(f"CPU threads {args.threads}; model default; input {pre.input_size}; steps {args.steps}")
    if args.levers:
        levers(model, layers, pre)

    pairs = [(p, u) for p, _ in layers for u in units[p]]
    lucent = run_lucent(pairs, args.steps, args.threads)
    lucent_act: dict[tuple[str, int], float] = {}
    for p, layout in layers:
        rows = [r for r in lucent if r["layer"] == p]
        imgs = torch.from_numpy(np.stack([r["image"] for r in rows])).permute(0, 3, 1, 2).float()
        for r, a in zip(
            rows, score(model, p, layout, [r["unit"] for r in rows], imgs, pre), strict=True
        ):
            lucent_act[(p, r["unit"])] = float(a)
            print(
                f"lucent {p}:{r['unit']:<4d} {r['seconds']:6.1f} s (cpu {r['cpu']:6.1f} s)"
                f"  act_max {a:8.3f}"
            )
    lucent_s = statistics.mean(r["seconds"] for r in lucent)
    lucent_cpu = statistics.mean(r["cpu"] for r in lucent)

    summary = {}
    for size in [int(s) for s in args.sizes.split(",")]:
        to_quality, to_quality_cpu, at_default, ratios, all_reached = [], [], [], [], []
        for p, layout in layers:
            us = units[p]
            marks, elapsed, cpu, acts = run_ours(
                model, p, layout, us, pre, args.steps, size, args.eval_every
            )
            at_default.append(float(elapsed[-1]) / len(us))
            reach = []
            for j, u in enumerate(us):
                target = lucent_act[(p, u)]
                hit = np.nonzero(acts[:, j] >= target)[0]
                # Not reached within the steps: charge the whole run.
                k = int(hit[0]) if len(hit) else len(marks) - 1
                reach.append(k)
                to_quality.append(float(elapsed[k]) / len(us))
                to_quality_cpu.append(float(cpu[k]) / len(us))
                ratios.append(float(acts[-1, j]) / target)
                print(
                    f"ours@{size} {p}:{u:<4d} reaches Lucent at step "
                    f"{marks[k] if len(hit) else 'never'}; final act_max {acts[-1, j]:8.3f}"
                )
            all_reached.append(float(elapsed[max(reach)]) / len(us))
        summary[size] = {
            "s_per_unit_to_quality": statistics.mean(to_quality),
            "cpu_s_per_unit_to_quality": statistics.mean(to_quality_cpu),
            "s_per_unit_all_reached": statistics.mean(all_reached),
            "s_per_unit_default": statistics.mean(at_default),
            "quality_ratio": statistics.median(ratios),
        }
        print(f"ours@{size}: {json.dumps(summary[size])}")
    main_size = int(args.sizes.split(",")[0])
    ours = summary[main_size]
    print(
        json.dumps(
            {
                "bench": "featvis",
                "lucent_s_per_unit": round(lucent_s, 3),
                "ours_s_per_unit_to_lucent_quality": round(ours["s_per_unit_to_quality"], 3),
                "speedup": round(lucent_s / ours["s_per_unit_to_quality"], 2),
                "ours_quality_ratio": round(ours["quality_ratio"], 3),
                # The CPU is shared with other jobs: CPU-time figures are steadier than wall.
                "speedup_cpu_time": round(lucent_cpu / ours["cpu_s_per_unit_to_quality"], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
