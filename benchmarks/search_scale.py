"""Zero-shot search over a million unit vectors in the web process: exact float32 numpy against
the faiss index the product uses for large indexes (``backend/vecindex.py``).

The vectors are planted like real unit text vectors: each unit mostly one concept of a
vocabulary, partly two others, every concept sharing a common direction (sentence embeddings
do), plus noise; 384 dimensions as the sentence encoder the classifiers use. Queries are
vocabulary entries and two-word phrases, answered through the web's ``TextIndex.search``.

Side by side, on the same queries (interleaved, so a busy machine slows all alike):
- exact: float32 matrix, one full scan in numpy (the baseline and the reference top-10);
- ours: faiss IVF-PQ fast-scan candidates re-ranked from int16 codes; also faiss's own top-10
  without the re-rank.
Figures: p50/p99 ms per query (wall, and CPU time of all threads), the index's bytes, the
resident memory it adds to a fresh process (measured in a subprocess that builds it, as the
web process does on load) and its build time; the share of queries whose top-10 units equal
exact search's; ``target_met``: ours within p99 50 ms, 1 GB, 95% (the issue's targets).
``--threads N`` sets faiss's OpenMP threads for the queries (default: faiss's own, all cores).

    .venv/bin/python benchmarks/search_scale.py                   # 1M units (~7 min, 6 GB)
    .venv/bin/python benchmarks/search_scale.py --units 200000    # quick
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import backend.vecindex as vecindex
from backend.textsearch import TextIndex
from backend.vecindex import ExactVectors, FaissVectors

ROOT = Path(__file__).resolve().parents[1]
TARGET_P99_MS, TARGET_MB, TARGET_SAME = 50.0, 1024.0, 0.95


def planted(units: int, dim: int, concepts: int, layers: int, seed: int) -> dict[str, np.ndarray]:
    """A ``search_index`` artifact's arrays with ``units`` planted unit vectors."""
    rng = np.random.default_rng(seed)
    common = rng.standard_normal(dim, dtype=np.float32)
    words = rng.standard_normal((concepts, dim), dtype=np.float32) + 0.8 * common
    words /= np.linalg.norm(words, axis=1, keepdims=True)
    vecs = np.empty((units, dim), dtype=np.float32)
    for start in range(0, units, 100_000):
        n = min(100_000, units - start)
        mix = rng.integers(0, concepts, size=(n, 3))  # (n, 3)
        weight = rng.gamma(1.0, 1.0, size=(n, 3)).astype(np.float32)
        weight *= np.array([1.0, 0.4, 0.4], dtype=np.float32)
        block = np.einsum("nk,nkd->nd", weight, words[mix])  # (n, dim)
        block += 0.05 * rng.standard_normal((n, dim), dtype=np.float32)
        vecs[start : start + n] = block / np.linalg.norm(block, axis=1, keepdims=True)
    per = -(-units // layers)
    return {
        "layer_names": np.array([f"layer{i}" for i in range(layers)]),
        "unit_layer": (np.arange(units) // per).astype(np.int32),
        "unit_index": (np.arange(units) % per).astype(np.int32),
        "unit_vecs": vecs,
        "vocab": np.array([f"concept{i}" for i in range(concepts)]),
        "vocab_vecs": words.astype(np.float16),
    }


def queries(concepts: int, n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        a, b = rng.integers(0, concepts, 2)
        out.append(f"concept{a}" if i % 2 == 0 else f"concept{a} concept{b}")
    return out


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child_memory(args: argparse.Namespace) -> None:
    """In a fresh process: the resident memory a built index adds, once its input is freed."""
    before = rss_mb()
    data = planted(args.units, args.dim, args.concepts, args.layers, seed=0)
    if args.exact:
        vecindex.LARGE = args.units + 1
    start = time.perf_counter()
    index = TextIndex(data)
    build = time.perf_counter() - start
    del data
    gc.collect()
    print(json.dumps({"rss_mb": rss_mb() - before, "build_s": build, "bytes": index.nbytes}))


def measure_memory(args: argparse.Namespace, exact: bool) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child-memory", "--units", str(args.units)]
    cmd += ["--dim", str(args.dim), "--concepts", str(args.concepts)]
    cmd += ["--layers", str(args.layers)] + (["--exact"] if exact else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def percentiles(ms: list[float]) -> tuple[float, float]:
    return round(float(np.percentile(ms, 50)), 2), round(float(np.percentile(ms, 99)), 2)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--units", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--concepts", type=int, default=2000)
    ap.add_argument("--layers", type=int, default=50, help="layers (of many models)")
    ap.add_argument("--queries", type=int, default=400)
    ap.add_argument("--threads", type=int, default=0, help="faiss OpenMP threads per query")
    ap.add_argument("--child-memory", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--exact", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_memory:
        child_memory(args)
        return

    start = time.perf_counter()
    data = planted(args.units, args.dim, args.concepts, args.layers, seed=0)
    print(f"planted {args.units} x {args.dim} in {time.perf_counter() - start:.1f} s")
    saved = vecindex.LARGE
    vecindex.LARGE = args.units + 1
    exact = TextIndex(data)  # the float32 baseline
    vecindex.LARGE = saved
    start = time.perf_counter()
    ours = TextIndex(data)
    print(f"faiss index built in {time.perf_counter() - start:.1f} s")
    assert isinstance(exact.vectors, ExactVectors) and isinstance(ours.vectors, FaissVectors)
    del data
    gc.collect()
    if args.threads:
        import faiss

        faiss.omp_set_num_threads(args.threads)

    qs = queries(args.concepts, args.queries, seed=1)
    times: dict[str, list[float]] = {"exact": [], "ours": []}
    cpu: dict[str, list[float]] = {name: [] for name in times}
    same = {"ours": 0, "ours_without_rerank": 0}

    def timed(name: str, fn, *args):  # type: ignore[no-untyped-def]
        w, c = time.perf_counter(), time.process_time()
        out = fn(*args)
        times[name].append((time.perf_counter() - w) * 1000)
        cpu[name].append((time.process_time() - c) * 1000)
        return out

    def units(index: TextIndex, q: str) -> set[tuple[str, int]]:
        return {(h.layer, h.unit) for h in index.search(q, top=10)[0]}

    for q in qs:
        vec, _ = ours.embed(q)
        assert vec is not None
        want = timed("exact", units, exact, q)
        got = timed("ours", units, ours, q)
        rows = {int(i) for i in exact.vectors.top(vec, 10)[0]}
        coarse = set(ours.vectors.top(vec, 10, refine=False)[0].tolist())
        same["ours"] += got == want
        same["ours_without_rerank"] += coarse == rows
    del exact
    gc.collect()

    mem_ours = measure_memory(args, exact=False)
    mem_exact = measure_memory(args, exact=True)
    result: dict[str, object] = {"bench": "search_scale", "units": args.units, "dim": args.dim}
    result["queries"] = len(qs)
    for name, ms in times.items():
        result[f"{name}_p50_ms"], result[f"{name}_p99_ms"] = percentiles(ms)
        # CPU time (all threads): steadier than wall time when others share the machine.
        result[f"{name}_cpu_p50_ms"], result[f"{name}_cpu_p99_ms"] = percentiles(cpu[name])
    for name, n in same.items():
        result[f"{name}_same_top10"] = round(n / len(qs), 4)
    result["exact_index_mb"] = round(mem_exact["bytes"] / 2**20, 1)
    result["exact_rss_mb"] = round(mem_exact["rss_mb"], 1)
    result["ours_index_mb"] = round(mem_ours["bytes"] / 2**20, 1)
    result["ours_rss_mb"] = round(mem_ours["rss_mb"], 1)
    result["ours_build_s"] = round(mem_ours["build_s"], 1)
    result["ours_lists"] = ours.vectors.lists
    result["ours_probes"] = ours.vectors.probes
    result["ours_candidates"] = max(vecindex.MIN_CANDIDATES, vecindex.CANDIDATES * 10)
    result["ours_threads"] = args.threads or "faiss default"
    result["target_met"] = bool(
        result["ours_p99_ms"] <= TARGET_P99_MS
        and max(result["ours_rss_mb"], result["ours_index_mb"]) <= TARGET_MB
        and result["ours_same_top10"] >= TARGET_SAME
    )
    print(
        f"exact: p50 {result['exact_p50_ms']} ms, p99 {result['exact_p99_ms']} ms, "
        f"{result['exact_rss_mb']} MB | ours: p50 {result['ours_p50_ms']} ms, "
        f"p99 {result['ours_p99_ms']} ms, {result['ours_rss_mb']} MB, "
        f"same {result['ours_same_top10']} "
        f"(without re-rank {result['ours_without_rerank_same_top10']})"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
