"""Web server throughput and latency: static file, unit JSON, unit page, layer grid page.

Seeds a database (SQLite in a temp dir by default, or PostgreSQL with --postgres) with 1k and
1M units, starts uvicorn on loopback (1 worker, and 2 with --workers 1,2), and drives each
target with wrk (64 connections, 20 s), rotating over many unit/layer URLs with a Lua script.
Figures: requests/s, p50/p99 latency, errors (non-2xx + socket errors), each target's
throughput over the static file's, server CPU seconds per 1000 requests, and the unit page's
p99 on 1M units over 1k. Ends with one JSON line (figures from the largest database, 1 worker).

    .venv/bin/python benchmarks/server.py                      # full (~6 min)
    .venv/bin/python benchmarks/server.py --quick              # 1k + 100k units, 5 s each
    .venv/bin/python benchmarks/server.py --postgres           # PostgreSQL on 127.0.0.1:5432
    .venv/bin/python benchmarks/server.py --patch cache_lookups --fast-deps   # try changes

Uses Debian's wrk, installing it with apt-get when absent. The machine's cores are shared by
the server, wrk and anything else running: figures are wall-clock and noisy; CPU ms per request is
steadier.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.seed import seed  # noqa: E402

PG_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
FAST_PKGS = ROOT / "benchmarks" / ".server-pkgs"
TARGETS = ("static", "unit_json", "unit_page", "layer_page")
HTML = "text/html,application/xhtml+xml"

WRK_LUA = r"""
local paths = {}
for line in io.lines(os.getenv("BENCH_URLS")) do paths[#paths + 1] = line end
local accept = os.getenv("BENCH_ACCEPT") or "*/*"
local threads = {}
function setup(thread)
  thread:set("start", #threads * 7919)
  table.insert(threads, thread)
end
function init(args)
  non2xx = 0
  i = start % #paths
end
function request()
  i = i % #paths + 1
  return wrk.format("GET", paths[i], {["Accept"] = accept})
end
function response(status, headers, body)
  if status < 200 or status > 299 then non2xx = non2xx + 1 end
end
function done(summary, latency, requests)
  local bad = 0
  for _, t in ipairs(threads) do bad = bad + t:get("non2xx") end
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, '
    .. '"p99_us": %d, "max_us": %d, "mean_us": %.1f, "connect": %d, "read": %d, '
    .. '"write": %d, "status": %d, "timeout": %d, "non2xx": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean, e.connect, e.read, e.write,
    e.status, e.timeout, bad))
end
"""


# ---------------------------------------------------------------------------------------------
# Candidate backend changes, applied inside the server process only (never to backend/ files).


def _patch_cache_lookups() -> None:
    """Cache model and layer rows by name for a short time (they change only on registration)."""
    from sqlalchemy.orm import make_transient_to_detached

    from backend.catalog import service
    from backend.db.models import Layer, Model

    ttl = 5.0
    models: dict[str, tuple[float, dict[str, Any]]] = {}
    layers: dict[tuple[int, str], tuple[float, dict[str, Any]]] = {}

    def _snapshot(obj: Any) -> dict[str, Any]:
        return {c.key: getattr(obj, c.key) for c in obj.__table__.columns}

    def _revive(cls: type, data: dict[str, Any], session: Any) -> Any:
        obj = cls(**data)
        make_transient_to_detached(obj)
        return session.merge(obj, load=False)

    def get_model(session: Any, slug: str) -> Model:
        hit = models.get(slug)
        now = time.monotonic()
        if hit and now - hit[0] < ttl:
            return _revive(Model, hit[1], session)  # type: ignore[no-any-return]
        m = orig_get_model(session, slug)
        models[slug] = (now, _snapshot(m))
        return m

    def get_layer(session: Any, model: Model, name: str) -> Layer:
        key = (model.id, name)
        hit = layers.get(key)
        now = time.monotonic()
        if hit and now - hit[0] < ttl:
            return _revive(Layer, hit[1], session)  # type: ignore[no-any-return]
        lyr = orig_get_layer(session, model, name)
        layers[key] = (now, _snapshot(lyr))
        return lyr

    orig_get_model, orig_get_layer = service.get_model, service.get_layer
    service.get_model, service.get_layer = get_model, get_layer  # type: ignore[assignment]


def _patch_unit_one_query() -> None:
    """unit_view: one joined query for model + layer + unit instead of three round trips."""
    from sqlalchemy import select

    from backend.catalog import service
    from backend.catalog.repository import CatalogRepository
    from backend.db.models import Layer, Model, Unit

    def unit_view(session: Any, model_slug: str, layer_name: str, index: int) -> Any:
        row = session.execute(
            select(Model, Layer, Unit)
            .join(Layer, Layer.model_id == Model.id)
            .join(Unit, (Unit.layer_id == Layer.id) & (Unit.index == index))
            .where(Model.slug == model_slug, Layer.name == layer_name)
        ).first()
        if row is None:
            # Fall back to the step-by-step lookups for the precise 404 message.
            return orig(session, model_slug, layer_name, index)
        model, layer, unit = row
        arts = list(CatalogRepository(session).unit_artifacts(layer.id, index))
        out = service.unit_out(model, layer, unit, arts)
        by_kind: dict[str, list[Any]] = {}
        for a in out.artifacts:
            by_kind.setdefault(a.kind, []).append(a)
        return service.UnitView(model, layer, unit, out, by_kind)

    orig = service.unit_view
    service.unit_view = unit_view  # type: ignore[assignment]


def _patch_no_etag() -> None:
    """Measure the ETag middleware's cost: build the app without it."""
    from backend import app as app_module

    class _Pass:
        def __init__(self, app: Any) -> None:
            self.app = app

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            await self.app(scope, receive, send)

    app_module.ETagMiddleware = _Pass  # type: ignore[assignment,misc]


def _patch_session_limit() -> None:
    """SessionDep with max_concurrency = the pool's capacity, so no handler waits on the pool.

    Without it, 64 concurrent JSON requests deadlock: FastAPI validates a sync handler's
    response in the threadpool while the request still holds its pooled connection, and all
    40 threads sit in handlers waiting for a connection (SQLite pool: 5 + 10 overflow).
    """
    from typing import Annotated

    from fastapi import Depends
    from sqlalchemy.orm import Session

    from backend import deps
    from backend.config import get_settings
    from backend.db.session import get_engine

    pool = get_engine(get_settings().database_url).pool
    cap = pool.size() + max(pool._max_overflow, 0)  # type: ignore[attr-defined]
    deps.SessionDep = Annotated[Session, Depends(deps.get_db, max_concurrency=cap)]  # type: ignore[misc]


def _patch_grid_columns() -> None:
    """Grid thumbnails: select (unit_index, storage_key) of the one variant, not ORM rows."""
    from sqlalchemy import select

    from backend import urls
    from backend.catalog import service
    from backend.catalog.repository import CatalogRepository
    from backend.db.models import Artifact

    def list_units(
        session: Any, model: Any, layer: Any, *, offset: int, limit: int, view: str = "auto"
    ) -> Any:
        units = CatalogRepository(session).list_units(layer.id, offset=offset, limit=limit)
        idx = [u.index for u in units]
        thumbs: dict[int, str] = {}
        grid_views = getattr(service, "GRID_VIEWS", None) or {
            "auto": (("featvis", "channel"), ("example_crop", "thumb"))
        }
        for kind, variant in grid_views.get(view, grid_views["auto"]):
            rows = session.execute(
                select(Artifact.unit_index, Artifact.storage_key).where(
                    Artifact.layer_id == layer.id,
                    Artifact.kind == kind,
                    Artifact.variant == variant,
                    Artifact.unit_index.in_(idx),
                )
            ).all()
            for i, key in rows:
                thumbs.setdefault(i, urls.object_url(key))
        return [
            {
                "index": u.index,
                "label": u.label,
                "url": urls.unit_url(model.slug, layer.name, u.index),
                "api_url": urls.api_unit_url(model.slug, layer.name, u.index),
                "thumbnail": thumbs.get(u.index),
            }
            for u in units
        ]

    service.list_units = list_units  # type: ignore[assignment]


def _patch_no_template_reload() -> None:
    """Jinja without auto_reload: no stat() of every template file on every render."""
    from backend.templating import templates

    templates.env.auto_reload = False


PATCHES = {
    "session_limit": _patch_session_limit,
    "grid_columns": _patch_grid_columns,
    "no_template_reload": _patch_no_template_reload,
    "cache_lookups": _patch_cache_lookups,
    "unit_one_query": _patch_unit_one_query,
    "no_etag": _patch_no_etag,
}


def patched_app() -> Any:
    """uvicorn factory: apply the patches named in BENCH_PATCHES, then build the app."""
    for name in filter(None, os.environ.get("BENCH_PATCHES", "").split(",")):
        PATCHES[name]()
    from backend.app import create_app

    return create_app()


# ---------------------------------------------------------------------------------------------
# Server process, CPU accounting, wrk.


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tree(pid: int) -> list[int]:
    out = [pid]
    for p in out:
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                out += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    return out


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its descendants (workers included)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in _tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


class Server:
    """uvicorn on loopback in a child process group."""

    def __init__(
        self,
        db_url: str,
        data_dir: Path,
        workers: int,
        patches: list[str],
        fast: bool,
        cache: bool = True,
    ) -> None:
        self.port = _free_port()
        self.cache = cache
        env = dict(os.environ)
        env.update(
            MICROSCOPE_DATA_DIR=str(data_dir),
            MICROSCOPE_DATABASE_URL=db_url,
            MICROSCOPE_ADMIN_TOKEN="bench-admin-token-0123456789",
            BENCH_PATCHES=",".join(patches),
            # "off" is the baseline: every request runs its handler.
            MICROSCOPE_PAGE_CACHE_MB="64" if cache else "0",
        )
        paths = [str(ROOT)]
        if fast:
            paths.insert(0, str(FAST_PKGS))
        env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")])
        app = "benchmarks.server:patched_app" if patches else "backend.app:app_factory"
        cmd = [sys.executable, "-m", "uvicorn", app, "--factory", "--host", "127.0.0.1"]
        cmd += ["--port", str(self.port), "--workers", str(workers)]
        cmd += ["--no-access-log", "--log-level", "warning"]
        # Server tracebacks (e.g. pool timeouts) go to a log, counted and summarised after.
        self.log_path = data_dir / f"server-{self.port}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, start_new_session=True, stdout=self._log, stderr=self._log
        )
        self.base = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}")
            try:
                urllib.request.urlopen(self.base + "/healthz", timeout=1).read()
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("server did not start in 60 s")

    def cpu(self) -> float:
        return _cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()

    def error_lines(self) -> list[str]:
        """The server log's exception lines (last line of each traceback), deduplicated."""
        lines = self.log_path.read_text(errors="replace").splitlines()
        errs = [x for x in lines if x and not x.startswith((" ", "Traceback", "ERROR:", "INFO:"))]
        return sorted(set(errs))


def run_wrk(
    base: str, urls: list[str], accept: str, seconds: float, conns: int, lua: Path, tmp: Path
) -> dict[str, Any]:
    """One wrk run over ``urls`` (rotated); its figures as a dict."""
    url_file = tmp / f"urls-{uuid.uuid4().hex[:8]}.txt"
    url_file.write_text("\n".join(urls) + "\n")
    env = dict(os.environ, BENCH_URLS=str(url_file), BENCH_ACCEPT=accept)
    # One wrk thread: the server needs the cores more than the load generator does.
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{max(1, round(seconds))}s", "--timeout", "5s"]
    cmd += ["-s", str(lua), base + urls[0]]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    line = next(x for x in res.stdout.splitlines() if x.startswith("BENCHJSON "))
    d = json.loads(line.removeprefix("BENCHJSON "))
    d["rps"] = d["requests"] / (d["duration_us"] / 1e6)
    d["errors"] = sum(d[k] for k in ("connect", "read", "write", "timeout", "non2xx"))
    return d


def warm(base: str, urls: list[str], accept: str) -> None:
    """GET each URL once on one keep-alive connection."""
    import http.client

    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    for u in urls:
        conn.request("GET", u, headers={"Accept": accept})
        conn.getresponse().read()
    conn.close()


def _check(base: str, url: str, accept: str) -> str | None:
    """None if ``url`` answers 200 within 10 s, else what went wrong."""
    req = urllib.request.Request(base + url, headers={"Accept": accept})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return None if r.status == 200 else f"HTTP {r.status}"
    except OSError as e:
        return repr(e)


def url_lists(info: Any, n: int = 2000, seed_value: int = 1) -> dict[str, tuple[list[str], str]]:
    """target -> (paths to rotate over, Accept header)."""
    rng = random.Random(seed_value)
    hot = list(info.hot)
    rng.shuffle(hot)
    unit_json = [f"/api/v1/models/{info.slug}/layers/{la}/units/{i}" for la, i in hot]
    unit_page = [f"/models/{info.slug}/{la}/{i}" for la, i in hot]
    grid = [(la, off) for la in info.layers for off in range(0, info.units_per_layer, 96)]
    grid = rng.sample(grid, min(n, len(grid)))
    layer_page = [
        f"/models/{info.slug}/{la}" + (f"?offset={off}" if off else "") for la, off in grid
    ]
    return {
        "static": (["/static/microscope.css"], "text/css,*/*"),
        "unit_json": (unit_json[:n], "application/json"),
        "unit_page": (unit_page[:n], HTML),
        "layer_page": (layer_page, HTML),
    }


def bench_targets(
    start: Any,
    lists: dict[str, tuple[list[str], str]],
    seconds: float,
    conns: int,
    warmup: float,
    lua: Path,
    tmp: Path,
) -> dict[str, dict[str, Any]]:
    """Each target on a fresh server (a stuck target cannot slow the next): warm-up, then
    the measured run with the server's CPU time."""
    out: dict[str, dict[str, Any]] = {}
    for target in TARGETS:
        urls, accept = lists[target]
        server = start()
        try:
            if server.cache and target != "static":
                # Steady state: every URL in the rotation asked once, so the measured run
                # sees a warm page cache (the cache-off run is the cold figure).
                warm(server.base, urls, accept)
            if warmup > 0:
                run_wrk(server.base, urls, accept, warmup, conns, lua, tmp)
            c0 = server.cpu()
            r = run_wrk(server.base, urls, accept, seconds, conns, lua, tmp)
            r["cpu_ms_per_req"] = 1000 * (server.cpu() - c0) / max(r["requests"], 1)
            r["check_after"] = _check(server.base, urls[-1], accept)
        finally:
            server.stop()
        r["server_errors"] = server.error_lines()
        if r["requests"] == 0:
            r["errors"] = max(r["errors"], conns)  # every connection hung: count them
            r["p50_us"] = r["p99_us"] = r["duration_us"]
        out[target] = r
        note = f"  after the run: {r['check_after']}" if r["check_after"] else ""
        for line in r["server_errors"][:3]:
            note += f"\n      server log: {line[:160]}"
        print(
            f"    {target:<11} {r['rps']:8.0f} req/s  p50 {r['p50_us'] / 1000:6.1f} ms  "
            f"p99 {r['p99_us'] / 1000:6.1f} ms  errors {r['errors']:<4d} "
            f"server CPU {r['cpu_ms_per_req']:.2f} ms/req  ({len(urls)} URLs){note}",
            flush=True,
        )
    return out


def _ensure_fast_deps() -> None:
    if (FAST_PKGS / "uvloop").is_dir() and (FAST_PKGS / "httptools").is_dir():
        return
    FAST_PKGS.mkdir(parents=True, exist_ok=True)
    (FAST_PKGS / ".gitignore").write_text("*\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--target", str(FAST_PKGS)]
        + ["httptools", "uvloop"],
        check=True,
    )


def _pg_create(base_url: str, name: str) -> str:
    from sqlalchemy import create_engine, text

    admin = create_engine(base_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return base_url.rsplit("/", 1)[0] + "/" + name


def _pg_drop(base_url: str, name: str) -> None:
    from sqlalchemy import create_engine, text

    admin = create_engine(base_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _ensure_wrk() -> None:
    """Install Debian's wrk when it is absent (as root, else through sudo)."""
    if shutil.which("wrk") is not None:
        return
    print("wrk not found: installing Debian's wrk", flush=True)
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-q", "wrk"]):
        done = subprocess.run(sudo + cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"could not install wrk ({' '.join(cmd)}): {done.stderr.strip()[-500:]}")
    if shutil.which("wrk") is None:
        sys.exit("apt-get installed wrk but it is not on PATH")


def _fmt_size(n: int) -> str:
    return f"{n // 1_000_000}M" if n >= 1_000_000 else f"{n // 1000}k"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=20.0, help="seconds per target")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per target")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--sizes", default="1000,1000000", help="units in the database, comma list")
    p.add_argument("--workers", default="1", help="uvicorn worker counts to try, e.g. 1,2")
    p.add_argument("--artifacts-per-unit", type=int, default=10, help="filler per unit")
    p.add_argument("--postgres", nargs="?", const=PG_DEFAULT, default=None, metavar="URL")
    p.add_argument("--patch", default="", help=f"comma list of {sorted(PATCHES)}")
    p.add_argument("--fast-deps", action="store_true", help="uvicorn with httptools + uvloop")
    p.add_argument("--quick", action="store_true", help="1k + 100k units, 5 s per target")
    p.add_argument(
        "--cache", default="off,on", help="page cache modes to run: off (baseline), on (ours)"
    )
    a = p.parse_args()
    _ensure_wrk()
    if a.quick:
        a.duration, a.warmup = min(a.duration, 5.0), min(a.warmup, 1.0)
        if a.sizes == p.get_default("sizes"):
            a.sizes = "1000,100000"
    patches = [x for x in a.patch.split(",") if x]
    unknown = set(patches) - set(PATCHES)
    if unknown:
        sys.exit(f"unknown patches {sorted(unknown)}; known: {sorted(PATCHES)}")
    if a.fast_deps:
        _ensure_fast_deps()
    sizes = [int(x) for x in a.sizes.split(",")]
    worker_counts = [int(x) for x in a.workers.split(",")]

    tmp = Path(tempfile.mkdtemp(prefix="bench-server-"))
    lua = tmp / "rotate.lua"
    lua.write_text(WRK_LUA)
    print(
        f"server benchmark: {os.cpu_count()} CPUs (shared), {a.connections} connections, "
        f"{a.duration:g} s per target, db={'postgres' if a.postgres else 'sqlite'}, "
        f"patches={patches or 'none'}, fast_deps={a.fast_deps}",
        flush=True,
    )
    modes = [m for m in a.cache.split(",") if m]
    if not modes or set(modes) - {"off", "on"}:
        sys.exit("--cache takes off, on or off,on")
    results: dict[int, dict[tuple[int, str], dict[str, dict[str, Any]]]] = {}
    seeds: dict[int, dict[str, Any]] = {}
    try:
        for n in sizes:
            data_dir = tmp / f"data-{n}"
            data_dir.mkdir()
            pg_name = None
            if a.postgres:
                pg_name = f"bench_server_{n}_{uuid.uuid4().hex[:6]}"
                url = _pg_create(a.postgres, pg_name)
            else:
                url = f"sqlite:///{data_dir / 'microscope.sqlite'}"
            t = time.perf_counter()
            info = seed(url, n, artifacts_per_unit=a.artifacts_per_unit)
            seeds[n] = {"seconds": time.perf_counter() - t, "artifacts": info.artifacts}
            print(
                f"  {_fmt_size(n)} units: {info.units} units in {len(info.layers)} layers, "
                f"{info.artifacts} artifacts, seeded in {seeds[n]['seconds']:.1f} s",
                flush=True,
            )
            lists = url_lists(info)
            results[n] = {}
            try:
                for w in worker_counts:
                    for mode in modes:
                        print(f"  uvicorn --workers {w}, page cache {mode}", flush=True)
                        start = functools.partial(
                            Server, url, data_dir, w, patches, a.fast_deps, mode == "on"
                        )
                        results[n][(w, mode)] = bench_targets(
                            start, lists, a.duration, a.connections, a.warmup, lua, tmp
                        )
            finally:
                if pg_name and a.postgres:
                    from backend.db.session import get_engine

                    get_engine.cache_clear()
                    _pg_drop(a.postgres, pg_name)
                shutil.rmtree(data_dir, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    big, small = max(sizes), min(sizes)
    # Headline figures: the last mode (ours, the cache on, when both ran); "_nocache" keys
    # give the baseline from the same run.
    main_key = (worker_counts[0], modes[-1])
    head = results[big][main_key]
    static = head["static"]["rps"]
    summary: dict[str, Any] = {"bench": "server"}
    for t in TARGETS:
        summary[f"{t}_rps"] = round(head[t]["rps"], 1)
    summary["unit_json_ratio"] = round(head["unit_json"]["rps"] / static, 3)
    summary["unit_page_ratio"] = round(head["unit_page"]["rps"] / static, 3)
    summary["layer_page_ratio"] = round(head["layer_page"]["rps"] / static, 3)
    summary["unit_page_p99_ms"] = round(head["unit_page"]["p99_us"] / 1000, 2)
    if "off" in modes and modes[-1] != "off":
        base = results[big][(worker_counts[0], "off")]
        base_static = base["static"]["rps"]
        for t in ("unit_json", "unit_page", "layer_page"):
            summary[f"{t}_ratio_nocache"] = round(base[t]["rps"] / base_static, 3)
            summary[f"{t}_p99_ms_nocache"] = round(base[t]["p99_us"] / 1000, 2)
    summary["errors"] = sum(
        r["errors"] for by_w in results.values() for w in by_w.values() for r in w.values()
    )
    p99_small = results[small][main_key]["unit_page"]["p99_us"]
    summary["p99_1m_over_1k"] = round(head["unit_page"]["p99_us"] / max(p99_small, 1), 3)
    for t in TARGETS:
        summary[f"{t}_p50_ms"] = round(head[t]["p50_us"] / 1000, 2)
        summary[f"{t}_p99_ms"] = round(head[t]["p99_us"] / 1000, 2)
        summary[f"{t}_cpu_ms_per_req"] = round(head[t]["cpu_ms_per_req"], 3)
    for n in sizes:
        for w, mode in results[n]:
            for t in TARGETS:
                r = results[n][(w, mode)][t]
                tag = f"{_fmt_size(n)}_w{w}_cache_{mode}"
                summary[f"{t}_rps_{tag}"] = round(r["rps"], 1)
                summary[f"{t}_p99_ms_{tag}"] = round(r["p99_us"] / 1000, 2)
        summary[f"seed_s_{_fmt_size(n)}"] = round(seeds[n]["seconds"], 1)
    summary["units_big"] = big
    summary["units_small"] = small
    summary["db"] = "postgres" if a.postgres else "sqlite"
    summary["workers"] = worker_counts[0]
    summary["connections"] = a.connections
    summary["duration_s"] = a.duration
    summary["patches"] = patches
    summary["fast_deps"] = a.fast_deps
    summary["cache_modes"] = modes
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
