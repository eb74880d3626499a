"""What the CLI asks of the worker side without importing it: whether a GPU will render, and
worker commands (``python -m workers.commands``) run in a subprocess, read as JSON lines. The
web process never imports torch (the `worker` extra); this keeps the CLI on that side too."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from backend.config import Settings

err = Console(stderr=True)


def gpu_present(settings: Settings) -> bool:
    """Whether the worker will render on a GPU (all units) or a CPU (a few, seconds each).

    Looks for the NVIDIA driver rather than importing torch into this process.
    """
    if settings.device.startswith("cuda"):
        return True
    return settings.device == "auto" and bool(
        Path("/proc/driver/nvidia/version").exists() or shutil.which("nvidia-smi")
    )


def worker_command(*args: str) -> Iterator[dict[str, Any]]:
    """Run ``python -m workers.commands ARGS`` and yield its JSON lines.

    Worker code (torch) runs in that subprocess: this process stays free of it.
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", "workers.commands", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    for line in proc.stdout:
        if line.startswith("{"):
            msg = json.loads(line)
            if "error" in msg:
                proc.wait()
                err.print(f"[red]error:[/] {msg['error']}")
                raise typer.Exit(2)
            yield msg
    if proc.wait() != 0:
        tail = proc.stderr.read().strip().splitlines()[-3:]
        if any("No module named" in t for t in tail):
            err.print("[red]this needs the worker extra:[/] pip install -e '.[worker]'")
        else:
            err.print("[red]worker command failed:[/] " + " | ".join(tail))
        raise typer.Exit(2)
