"""Services the reliability tests start, stop and kill themselves, on loopback and spare ports:
a PostgreSQL cluster of their own (never the shared one), a redis-server of their own, the web
server and Celery workers as real processes. Every wait is bounded."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUTPUT = ROOT / "test-output"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], bool], timeout: float, what: str, every: float = 0.1) -> float:
    """Poll ``check`` until true; the seconds it took, or AssertionError after ``timeout``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            if check():
                return time.monotonic() - t0
        except Exception:  # noqa: BLE001, S112 - not up yet
            pass
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout} s")


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Postgres:
    """A throwaway cluster (initdb, pg_ctl) owned by the postgres user, trust auth on 127.0.0.1."""

    def __init__(self) -> None:
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
        if not bins or not shutil.which("runuser"):
            raise RuntimeError("PostgreSQL server binaries or runuser not found")
        self.bin = Path(bins[-1])
        self.dir = Path(tempfile.mkdtemp(prefix="microscope-pg-"))
        shutil.chown(self.dir, "postgres", "postgres")
        self.port = free_port()
        data = str(self.dir / "data")
        self._as_postgres([str(self.bin / "initdb"), "-D", data, "--auth=trust", "-U", "postgres"])
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, cmd: list[str]) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *cmd],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._as_postgres(
            [str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-o", opts,
             "-l", str(self.dir / "log"), "-w", "-t", "30", "start"]
        )

    def stop(self) -> None:
        self._as_postgres(
            [str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "fast", "-w", "stop"]
        )

    def close(self) -> None:
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass  # already stopped
        shutil.rmtree(self.dir, ignore_errors=True)


class Redis:
    """A redis-server on a spare port, without persistence (a restart loses every message)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: _port_open(self.port), 10, "redis-server")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


def server(env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    """The web app under uvicorn (one process), once /healthz answers at all."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "backend.app:app_factory", "--factory",
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        cwd=ROOT,
        env=env,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            urllib.request.urlopen(f"{url}/healthz", timeout=2)
        except urllib.error.HTTPError:
            return True  # answering (503 while a service is away)
        return True

    wait_for(up, 30, "web server")
    return proc, url


def worker(
    env: dict[str, str], log: Path, name: str, pool: str = "solo"
) -> subprocess.Popen[bytes]:
    """A real Celery worker process in its own process group (``pool="prefork"``: one child
    runs the tasks, and a killed child is replaced by a fork, torch already imported)."""
    OUTPUT.mkdir(exist_ok=True)
    pool_args = ["--pool", pool] + (["--concurrency", "1"] if pool == "prefork" else [])
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker",
         "-Q", "interactive,gpu,cpu", *pool_args, "--loglevel", "INFO",
         "--without-gossip", "--without-mingle", "--hostname", f"{name}@%h"],
        cwd=ROOT,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )


def children(pid: int) -> list[int]:
    """The direct children of a process (a prefork worker's pool)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(c) for c in text.split()]


def stop(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM) -> None:
    """End a process we started (its group, for workers), within bounded time."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        proc.send_signal(sig)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
