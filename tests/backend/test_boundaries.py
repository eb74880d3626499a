"""The web process must not need torch; the compose file must be valid."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_web_app_imports_no_torch(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from backend.app import create_app\n"
        "from backend.config import Settings\n"
        f"create_app(Settings(data_dir={str(tmp_path)!r}))\n"
        "import backend.cli\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'torchvision', 'open_clip', 'timm', 'workers'))\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert out.stdout.strip() == "", f"web process imported: {out.stdout.strip()}"


def test_backend_sources_never_import_ml_packages() -> None:
    offenders = []
    for path in (ROOT / "backend").rglob("*.py"):
        for line in path.read_text().splitlines():
            s = line.strip()
            if s.startswith(("import torch", "from torch", "import timm", "import open_clip")):
                offenders.append(f"{path}: {s}")
            if s.startswith(("from workers", "import workers")):
                offenders.append(f"{path}: {s}")
    assert offenders == []


def _imports(folder: str) -> list[tuple[Path, str]]:
    """(file, import line) for every import statement under a folder of the repository."""
    found = []
    for path in (ROOT / folder).rglob("*.py"):
        for line in path.read_text().splitlines():
            s = line.strip()
            if s.startswith(("import ", "from ")):
                found.append((path, s))
    return found


def test_ml_layer_never_imports_the_web_package_or_tasks() -> None:
    offenders = [
        f"{p}: {s}"
        for p, s in _imports("workers/ml")
        if s.split()[1].split(".")[0] == "backend" or s.split()[1].startswith("workers.tasks")
    ]
    assert offenders == []


def test_contracts_import_neither_side() -> None:
    offenders = [
        f"{p}: {s}"
        for p, s in _imports("contracts")
        if s.split()[1].split(".")[0] in ("backend", "workers", "torch", "timm", "open_clip")
    ]
    assert offenders == []


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_docker_compose_file_is_valid() -> None:
    out = subprocess.run(
        ["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "MICROSCOPE_ADMIN_TOKEN": "compose-test-token-0123"},
    )
    assert out.returncode == 0, out.stderr
    # SeaweedFS is the S3 server (it replaced MinIO), as in the tests (tests/seaweedfs.py).
    for service in ("postgres", "redis", "seaweedfs", "api", "worker", "flower"):
        assert f"  {service}:" in out.stdout
    assert "driver: nvidia" in out.stdout
    services = yaml.safe_load(out.stdout)["services"]
    # The API checks a dataset folder exists when it is registered; it never writes there.
    assert "datasets:/datasets:ro" in services["api"]["volumes"]
    assert "datasets:/datasets:ro" in services["worker"]["volumes"]
    for app in ("api", "worker"):
        assert {"postgres", "redis", "seaweedfs"} <= set(services[app]["depends_on"])
        env = services[app]["environment"]
        assert env["MICROSCOPE_S3_ENDPOINT_URL"] == "http://seaweedfs:8333"
        assert env["MICROSCOPE_S3_ACCESS_KEY"] == services["seaweedfs"]["environment"][
            "AWS_ACCESS_KEY_ID"
        ]
    assert services["seaweedfs"]["command"][:2] == ["server", "-s3"]
