"""Mining at dataset scale: the product's mining jobs end to end at N and 10N small images.

A synthetic dataset of small JPEGs (deterministic square crops of the demo photos that ship
inside scikit-image and scikit-learn, resized to --image-px) is written to a temporary
directory, as loose files or (--tars) WebDataset-style tar shards. For each N (--small,
--large), in fresh child processes, on a SQLite database and a file store of its own:

  setup     add_dataset + import_folder, add_model + register (timed, not part of the figures);
  pipeline  the mining job as the tests drive it (tests/workers/test_mining_task.py): the
            parent job queues its shard jobs, every mine_shard job runs, the parent merges
            and renders; images/s over the whole job and its peak RSS (ru_maxrss);
  baseline  decode + forward alone: a plain DataLoader over the same files with the same
            preprocessing (load_rgb + to_batch) and loader workers (the LOADER_WORKERS
            setting, --workers), the same model's plain forward at the same batch size;
            images/s. Both children load the model before their clocks start.

The model is a small random-init one (--spec) at a small input size (--size, set on the loaded
model's preprocessing in both children), so the pipeline rather than the forward is measured.
Targets (issue #15): peak RSS at large / small <= 1.1, and the pipeline's images/s at large
>= 0.9 of the baseline's. Ends with one JSON line.

    .venv/bin/python benchmarks/mining_scale.py --small 1000 --large 10000      # quick
    .venv/bin/python benchmarks/mining_scale.py                                  # 10k and 100k
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

# One torch thread in both children: on the shared 2-core machine two OpenMP threads spin at
# every barrier whenever another process holds a core (the same 1,000-image baseline measured
# 0.5 s and 9 s); one thread is slower but steady.
THREADS = 1
TAR_SIZE = 1000  # images per tar shard with --tars
ROOT = Path(__file__).resolve().parent.parent


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def children_rss_mb() -> float:
    """Peak RSS of the largest child that has exited (the render's forked drawing processes;
    they share the parent's pages until written, so this overstates what they add)."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0


def cpu_s() -> float:
    """CPU seconds of this process (all its threads) and of its children that have exited
    (loader workers, the render's drawing processes)."""
    own, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


# --------------------------------------------------------------------------- the dataset


def source_photos() -> list:
    """scikit-image's and scikit-learn's colour photos (inside their wheels: no download);
    the demo dataset (workers/ml/demo_data.py) starts from the same photos."""
    import skimage.data
    from PIL import Image
    from sklearn.datasets import load_sample_images

    names = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "retina")
    photos = [Image.fromarray(getattr(skimage.data, n)()).convert("RGB") for n in names]
    photos += [Image.fromarray(a) for a in load_sample_images().images]
    return photos


def jpeg_at(photos: list, i: int, px: int) -> bytes:
    """Image i: a deterministic crop (10-60% of the short side) of one photo, px x px JPEG."""
    from PIL import Image

    rng = np.random.default_rng(i)
    p = photos[i % len(photos)]
    side = int(min(p.size) * rng.uniform(0.1, 0.6))
    left = int(rng.integers(0, p.width - side + 1))
    top = int(rng.integers(0, p.height - side + 1))
    crop = p.crop((left, top, left + side, top + side)).resize((px, px), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    crop.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def make_dataset(folder: Path, n: int, px: int, tars: bool) -> None:
    """n JPEGs under ``folder``: loose files in subfolders of 1,000, or tar shards of 1,000."""
    photos = source_photos()
    folder.mkdir(parents=True)
    for start in range(0, n, TAR_SIZE):
        ids = range(start, min(start + TAR_SIZE, n))
        if tars:
            with tarfile.open(folder / f"shard-{start // TAR_SIZE:05d}.tar", "w") as tf:
                for i in ids:
                    data = jpeg_at(photos, i, px)
                    info = tarfile.TarInfo(f"{i:08d}.jpg")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
        else:
            sub = folder / f"{start // TAR_SIZE:05d}"
            sub.mkdir()
            for i in ids:
                (sub / f"{i:08d}.jpg").write_bytes(jpeg_at(photos, i, px))


def link_prefix(src: Path, dst: Path, n: int, tars: bool) -> None:
    """The first n images of ``src`` as hard links under ``dst`` (n a multiple of 1,000)."""
    dst.mkdir(parents=True)
    for k in range(n // TAR_SIZE):
        if tars:
            os.link(src / f"shard-{k:05d}.tar", dst / f"shard-{k:05d}.tar")
        else:
            (dst / f"{k:05d}").mkdir()
            for f in sorted((src / f"{k:05d}").iterdir()):
                os.link(f, dst / f"{k:05d}" / f.name)


# --------------------------------------------------------------------------- children


def small_input(size: int) -> None:
    """Every model the worker loads gets input size ``size`` (the benchmark's patch of the
    product; ``--render-processes`` is the other)."""
    import workers.tasks.runtime as runtime
    from workers.ml.models import load_model

    def load(spec: str, device: str = "cpu"):  # type: ignore[no-untyped-def]
        loaded = load_model(spec, device)
        loaded.preprocess.input_size = size
        return loaded

    runtime.load_model = load  # type: ignore[assignment]
    runtime.cached_model.cache_clear()


def child_setup(folder: Path, spec: str) -> dict:
    from backend.catalog.service import add_model
    from backend.datasets.service import add_dataset
    from backend.db.migrate import upgrade
    from backend.db.models import Dataset
    from backend.db.session import session_scope
    from workers.tasks.catalog import register
    from workers.tasks.datasets import import_folder
    from workers.tasks.jobrun import run_job

    url = os.environ["MICROSCOPE_DATABASE_URL"]
    upgrade(url)
    with session_scope(url) as s:
        ds, ds_job = add_dataset(s, str(folder), "synthetic")
        m, m_job = add_model(s, spec)
        s.info.clear()  # run in-process, not through the broker
        ids = (ds.id, m.id, ds_job.id, m_job.id)
    t0 = time.perf_counter()
    assert run_job(ids[2], import_folder) == "succeeded"
    t1 = time.perf_counter()
    assert run_job(ids[3], register) == "succeeded"
    with session_scope(url) as s:
        count = s.get(Dataset, ids[0]).image_count
    return {"dataset_id": ids[0], "model_id": ids[1], "import_s": t1 - t0, "images": count}


def child_pipeline(dataset_id: int, model_id: int) -> dict:
    from sqlalchemy import select

    from backend.db.models import Job, Model
    from backend.db.session import session_scope
    from backend.jobs.service import enqueue_job
    from contracts.jobs import MineExamplesParams
    from workers.tasks.jobrun import Waiting, run_job
    from workers.tasks.mining import mine, mine_shard
    from workers.tasks.runtime import cached_model, device

    url = os.environ["MICROSCOPE_DATABASE_URL"]
    with session_scope(url) as s:
        spec = s.get(Model, model_id).spec
    # Loaded before timing, as the baseline loads its model, and as a worker that has run a
    # job holds it (cached_model): the figures compare the work per image, not start-up.
    t_load = time.perf_counter()
    cached_model(spec, device())
    load_s = time.perf_counter() - t_load
    rss0 = rss_mb()
    c0 = cpu_s()
    with session_scope(url) as s:
        job = enqueue_job(
            s,
            MineExamplesParams(model_id=model_id, dataset_id=dataset_id),
            queue="gpu",
            model_id=model_id,
            dataset_id=dataset_id,
        )
        s.info.clear()
        mine_job = job.id
    t0 = time.perf_counter()
    try:
        run_job(mine_job, mine)
        raise AssertionError("the mining job should wait for its shards")
    except Waiting:
        pass
    t1 = time.perf_counter()
    with session_scope(url) as s:
        shard_jobs = s.scalars(select(Job.id).where(Job.kind == "mine_shard")).all()
    for j in shard_jobs:
        assert run_job(j, mine_shard) == "succeeded"
    t2 = time.perf_counter()
    rss_shards = rss_mb()
    assert run_job(mine_job, mine) == "succeeded"
    t3 = time.perf_counter()
    c3 = cpu_s()
    return {
        "model_load_s": load_s,
        "cpu_s": c3 - c0,
        "queue_s": t1 - t0,
        "shards_s": t2 - t1,
        "shards": len(shard_jobs),
        "merge_render_s": t3 - t2,
        "total_s": t3 - t0,
        "rss_start_mb": rss0,
        "rss_after_shards_mb": rss_shards,
        "peak_rss_mb": rss_mb(),
        "peak_rss_children_mb": children_rss_mb(),
    }


def child_baseline(folder: Path, spec: str, size: int, batch: int) -> dict:
    import torch

    from workers.ml.images import load_rgb
    from workers.ml.models import load_model
    from workers.ml.preprocess import to_batch
    from workers.ml.sources import iter_tar, list_tars, make_loader
    from workers.tasks.runtime import loader_workers

    workers = loader_workers()  # the shard jobs' setting, from the same environment
    loaded = load_model(spec)
    loaded.preprocess.input_size = size
    cfg, model = loaded.preprocess, loaded.image_model
    tars = list_tars(folder)
    t0 = time.perf_counter()
    c0 = cpu_s()
    if tars:
        # Tar shards: bytes read front to back, decoded by the same loader.
        blobs: list[bytes] = []

        def batches():  # type: ignore[no-untyped-def]
            for tar in tars:
                blobs[:] = [b for _, b in iter_tar(folder, tar.relative_to(folder).as_posix())]
                load = lambda i: to_batch([load_rgb(blobs[i])], cfg)[0]  # noqa: E731
                yield from make_loader(range(len(blobs)), load, batch, workers)

        it = batches()
    else:
        files = sorted(p for p in folder.rglob("*.jpg"))
        it = make_loader(
            range(len(files)),
            lambda i: to_batch([load_rgb(files[i])], cfg)[0],
            batch,
            workers,
        )
    n = 0
    with torch.inference_mode():
        for x, ids in it:
            model(x)
            n += int(ids.shape[0])
    dt = time.perf_counter() - t0
    cpu = cpu_s() - c0
    return {
        "images": n,
        "seconds": dt,
        "img_s": n / dt,
        "cpu_s": cpu,
        "peak_rss_mb": rss_mb(),
        "workers": workers,
    }


def child_merge(n: int, spec: str, size: int) -> dict:
    """The merge step of ``mine`` (``merge_saved``, workers/tasks/mining.py) alone, over as
    many shards as n images make: synthetic shard states of the real shapes (the default
    layers' units and grids at this input size), saved with the task's own function. Returns
    the RSS the merge adds."""
    import torch

    from backend.config import get_settings
    from backend.storage import make_store
    from workers.ml.hooks import run_to, to_unit_maps
    from workers.ml.layers import enumerate_layers
    from workers.ml.mining import LayerReducer
    from workers.tasks.mining import SHARD_SIZE, K, _save_state, merge_saved
    from workers.tasks.runtime import cached_model

    loaded = cached_model(spec, "cpu")
    layouts = {i.module_path: i.layout for i in enumerate_layers(loaded) if i.default}
    x = torch.zeros(1, 3, size, size)
    with torch.inference_mode():
        outs = run_to(loaded.image_model, x, list(layouts))
    shapes = {p: to_unit_maps(o, layouts[p]).shape[1:] for p, o in outs.items()}  # (U, H, W)
    store = make_store(get_settings())
    keys = []
    g = torch.Generator().manual_seed(0)
    for i, start in enumerate(range(0, n, SHARD_SIZE)):
        ids = torch.arange(start, min(start + SHARD_SIZE, n))
        reducers = {}
        for p, shape in shapes.items():
            r = LayerReducer(K)
            r.update(torch.randn(len(ids), *shape, generator=g), ids)
            reducers[p] = r
        keys.append(f"probe/shard-{i:05d}.pt")
        _save_state(store, keys[-1], reducers)
        del reducers
    before = rss_mb()
    t0 = time.perf_counter()
    merged = merge_saved(store, keys)  # as mine() does
    dt = time.perf_counter() - t0
    assert merged
    return {"shards": len(keys), "merge_s": dt, "rss_before_mb": before, "peak_rss_mb": rss_mb()}


def run_child(args: list[str], env: dict[str, str]) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    if out.returncode != 0:
        sys.stderr.write(out.stderr[-4000:])
        raise RuntimeError(f"child {args[0]} failed ({out.returncode})")
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- parent


def child_env(state: Path) -> dict[str, str]:
    """A measuring child's environment: its own data folder and object store under ``state``."""
    return {
        **os.environ,
        "OMP_NUM_THREADS": str(THREADS),
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "MICROSCOPE_ENV": "test",
        "MICROSCOPE_DATA_DIR": str(state / "data"),
        "MICROSCOPE_STORAGE_URL": f"file://{state / 'objects'}",
    }


def measure(base: Path, folder: Path, n: int, args: argparse.Namespace) -> dict:
    state = base / f"state-{n}"
    state.mkdir()
    env = {
        **child_env(state),
        "MICROSCOPE_DATABASE_URL": f"sqlite:///{state / 'db.sqlite'}",
        "MICROSCOPE_BROKER_URL": f"sqla+sqlite:///{state / 'broker.sqlite'}",
        "MICROSCOPE_DATASET_ROOTS": json.dumps([str(base)]),
        "MICROSCOPE_DEVICE": "cpu",
    }
    if args.workers is not None:
        env["MICROSCOPE_LOADER_WORKERS"] = str(args.workers)
    if args.render_processes is not None:
        env["BENCH_RENDER_PROCESSES"] = str(args.render_processes)
    common = ["--spec", args.spec, "--size", str(args.size)]
    t0 = time.perf_counter()
    setup = run_child(["setup", "--folder", str(folder), *common], env)
    print(f"N={n}: setup {time.perf_counter() - t0:.0f} s (import {setup['import_s']:.0f} s)")
    pipe = run_child(
        ["pipeline", "--ids", str(setup["dataset_id"]), str(setup["model_id"]), *common], env
    )
    pipe["img_s"] = n / pipe["total_s"]
    pipe["shard_img_s"] = n / pipe["shards_s"]
    pipe["cpu_img_s"] = n / pipe["cpu_s"]
    print(
        f"N={n}: pipeline {pipe['total_s']:.1f} s ({pipe['img_s']:.0f} img/s; shards "
        f"{pipe['shards_s']:.1f} s over {pipe['shards']}, merge+render "
        f"{pipe['merge_render_s']:.1f} s; {pipe['cpu_img_s']:.0f} per CPU s), "
        f"peak RSS {pipe['peak_rss_mb']:.0f} MB "
        f"(after shards {pipe['rss_after_shards_mb']:.0f})"
    )
    base_r = run_child(["baseline", "--folder", str(folder), *common], env)
    print(
        f"N={n}: baseline {base_r['seconds']:.1f} s ({base_r['img_s']:.0f} img/s; "
        f"{n / base_r['cpu_s']:.0f} per CPU s), "
        f"peak RSS {base_r['peak_rss_mb']:.0f} MB"
    )
    merge = run_child(["merge", "--n", str(n), *common], env)
    merge["growth_mb"] = merge["peak_rss_mb"] - merge["rss_before_mb"]
    print(
        f"N={n}: merge of {merge['shards']} synthetic shard states alone: "
        f"+{merge['growth_mb']:.0f} MB RSS, {merge['merge_s']:.1f} s"
    )
    shutil.rmtree(state, ignore_errors=True)
    return {"setup": setup, "pipeline": pipe, "baseline": base_r, "merge": merge}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", type=int, default=10_000)
    ap.add_argument("--large", type=int, default=100_000)
    ap.add_argument("--size", type=int, default=64, help="the model's input size (px)")
    ap.add_argument("--image-px", type=int, default=64, help="side of the synthetic JPEGs")
    ap.add_argument("--spec", default="timm:test_efficientnet")
    ap.add_argument("--tars", action="store_true", help="tar shards of 1,000 instead of files")
    ap.add_argument(
        "--workers",
        type=int,
        default=None,
        help="DataLoader workers of the shard jobs and the baseline alike (default: the "
        "product's LOADER_WORKERS default)",
    )
    ap.add_argument(
        "--render-processes",
        type=int,
        default=None,
        help="drawing processes of the render (1: one drawing thread instead; default: the "
        "product's, one per core)",
    )
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--folder", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--ids", type=int, nargs=2, default=None, help=argparse.SUPPRESS)
    args, rest = ap.parse_known_args()

    if args.child is not None:
        import torch

        torch.set_num_threads(THREADS)
        if args.child != "baseline":
            small_input(args.size)
        if args.child == "setup":
            out = child_setup(Path(args.folder), args.spec)
        elif args.child == "pipeline":
            if os.environ.get("BENCH_RENDER_PROCESSES"):
                import workers.ml.sheets as sheets

                sheets.RENDER_PROCESSES = int(os.environ["BENCH_RENDER_PROCESSES"])
            out = child_pipeline(*args.ids)
        elif args.child == "merge":
            out = child_merge(args.n, args.spec, args.size)
        else:
            out = child_baseline(Path(args.folder), args.spec, args.size, 32)
        print(json.dumps(out))
        return

    for n in (args.small, args.large):
        if n % TAR_SIZE:
            raise SystemExit(f"sizes must be multiples of {TAR_SIZE}")
    base = Path(tempfile.mkdtemp(prefix="mining-scale-"))
    try:
        t0 = time.perf_counter()
        big = base / f"ds-{args.large}"
        make_dataset(big, args.large, args.image_px, args.tars)
        small = base / f"ds-{args.small}"
        link_prefix(big, small, args.small, args.tars)
        mb = sum(f.stat().st_size for f in big.rglob("*") if f.is_file()) / 2**20
        print(
            f"{args.large} JPEGs of {args.image_px} px ({mb:.0f} MB, "
            f"{'tar shards' if args.tars else 'files'}) in {time.perf_counter() - t0:.0f} s; "
            f"model {args.spec} at {args.size} px, batch 32, {THREADS} threads"
        )
        r_small = measure(base, small, args.small, args)
        r_large = measure(base, big, args.large, args)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    rss_ratio = r_large["pipeline"]["peak_rss_mb"] / r_small["pipeline"]["peak_rss_mb"]
    thr_ratio = r_large["pipeline"]["img_s"] / r_large["baseline"]["img_s"]
    result = {
        "bench": "mining_scale",
        "spec": args.spec,
        "input_size": args.size,
        "image_px": args.image_px,
        "tars": args.tars,
        "render_processes": args.render_processes,
        "small": args.small,
        "large": args.large,
        "peak_rss_mb_small": round(r_small["pipeline"]["peak_rss_mb"], 1),
        "peak_rss_mb_large": round(r_large["pipeline"]["peak_rss_mb"], 1),
        "rss_after_shards_mb_small": round(r_small["pipeline"]["rss_after_shards_mb"], 1),
        "rss_after_shards_mb_large": round(r_large["pipeline"]["rss_after_shards_mb"], 1),
        "rss_ratio": round(rss_ratio, 3),
        "peak_rss_children_mb_small": round(r_small["pipeline"]["peak_rss_children_mb"], 1),
        "peak_rss_children_mb_large": round(r_large["pipeline"]["peak_rss_children_mb"], 1),
        "pipeline_img_s_small": round(r_small["pipeline"]["img_s"], 1),
        "pipeline_img_s_large": round(r_large["pipeline"]["img_s"], 1),
        "shard_img_s_large": round(r_large["pipeline"]["shard_img_s"], 1),
        "merge_render_s_small": round(r_small["pipeline"]["merge_render_s"], 1),
        "merge_render_s_large": round(r_large["pipeline"]["merge_render_s"], 1),
        "shards_large": r_large["pipeline"]["shards"],
        "baseline_img_s_small": round(r_small["baseline"]["img_s"], 1),
        "baseline_img_s_large": round(r_large["baseline"]["img_s"], 1),
        "throughput_ratio": round(thr_ratio, 3),
        "pipeline_cpu_img_s_large": round(r_large["pipeline"]["cpu_img_s"], 1),
        "baseline_cpu_img_s_large": round(args.large / r_large["baseline"]["cpu_s"], 1),
        "throughput_ratio_cpu": round(
            r_large["pipeline"]["cpu_img_s"] * r_large["baseline"]["cpu_s"] / args.large, 3
        ),
        "merge_rss_growth_mb_small": round(r_small["merge"]["growth_mb"], 1),
        "merge_rss_growth_mb_large": round(r_large["merge"]["growth_mb"], 1),
        "import_s_small": round(r_small["setup"]["import_s"], 1),
        "import_s_large": round(r_large["setup"]["import_s"], 1),
        "target_met": bool(rss_ratio <= 1.1 and thr_ratio >= 0.9),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
