"""Proof 5, load: wrk at 128 connections on loopback for LOAD_SECONDS (60 by default) on unit
JSON, unit pages and grids: no errors, no non-2xx answers, and the server's memory flat."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.factories import make_artifact, make_layer, make_model
from tests.reliability.services import OUTPUT, server, stop

pytestmark = pytest.mark.once

SECONDS = int(os.environ.get("MICROSCOPE_LOAD_SECONDS", "60"))
CONNECTIONS = 128
UNITS = 64
GROWTH_LIMIT_MB = 40  # after warm-up; a leak per request would pass this within seconds

SCRIPT = """
math.randomseed(7)
local paths = {}
for i = 0, %(units)d - 1 do
  paths[#paths + 1] = "/api/v1/models/tiny/layers/blocks.1/units/" .. i
  paths[#paths + 1] = "/models/tiny/blocks.1/" .. i
end
paths[#paths + 1] = "/models/tiny/blocks.1"
paths[#paths + 1] = "/api/v1/models/tiny/layers/blocks.1/units?limit=50"
paths[#paths + 1] = "/api/v1/models"
request = function()
  local p = paths[math.random(#paths)]
  return wrk.format("GET", p, {["Accept"] = "text/html"})
end
"""


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk not installed (scripts/bootstrap.sh)")
def test_load_on_loopback(settings, session, tmp_path) -> None:
    from backend.storage import make_store

    m = make_model(session, "tiny")
    layer = make_layer(session, m, "blocks.1", units=UNITS)
    for u in range(0, UNITS, 4):
        make_artifact(session, make_store(settings), m, layer, u)
    session.commit()
    script = tmp_path / "paths.lua"
    script.write_text(SCRIPT % {"units": UNITS})
    proc, base = server(dict(os.environ))
    samples: list[tuple[float, float]] = []
    done = threading.Event()

    def sample() -> None:
        t0 = time.monotonic()
        while not done.wait(2):
            samples.append((time.monotonic() - t0, _rss_mb(proc.pid)))

    sampler = threading.Thread(target=sample)
    try:
        # Warm-up: every page rendered and cached once, the interpreter's pools grown.
        subprocess.run(
            ["wrk", "-t2", f"-c{CONNECTIONS}", "-d5s", "-s", str(script), base],
            capture_output=True,
            timeout=60,
            check=True,
        )
        sampler.start()
        out = subprocess.run(
            ["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{SECONDS}s", "--timeout", "10s",
             "-s", str(script), base],
            capture_output=True,
            text=True,
            timeout=SECONDS + 60,
            check=True,
        ).stdout
        done.set()
        sampler.join(10)
        alive = proc.poll() is None
    finally:
        done.set()
        stop(proc)
    assert alive
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    assert "Non-2xx or 3xx responses" not in out, out
    assert "Socket errors" not in out, out
    rss = [mb for _, mb in samples]
    growth = max(rss[len(rss) // 4 :]) - rss[len(rss) // 4]  # after the first quarter
    assert growth < GROWTH_LIMIT_MB, samples
    OUTPUT.mkdir(exist_ok=True)
    (OUTPUT / "load.json").write_text(
        json.dumps(
            {
                "seconds": SECONDS,
                "connections": CONNECTIONS,
                "requests": requests,
                "errors": 0,
                "rss_mb_start": round(rss[0], 1),
                "rss_mb_end": round(rss[-1], 1),
                "rss_growth_mb": round(growth, 1),
                "wrk": out.strip().splitlines()[-2:],
            }
        )
    )
