"""The web process must not need torch; the compose file must be valid."""

from __future__ import annotations

import ast
import graphlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
# The compose file names no password of its own: each comes from the environment.
COMPOSE_SECRETS = {
    "MICROSCOPE_ADMIN_TOKEN": "compose-test-token-0123",
    "MINIO_ROOT_PASSWORD": "compose-test-minio-0123",
    "FLOWER_BASIC_AUTH": "ops:compose-test-flower",
}


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


# Domain packages of the web process, and the unit page that composes catalog and families.
DOMAINS = ("catalog", "families", "datasets", "jobs", "unitpage")


def _backend_import_graph() -> dict[str, set[str]]:
    """backend module -> the backend modules it imports (function-level imports included)."""
    names = {
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
        for p in (ROOT / "backend").rglob("*.py")
    }
    graph: dict[str, set[str]] = {}
    for name, path in names.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        graph[name] = {m for m in found if m in names and m != name}
    return graph


def _domain(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in DOMAINS else None


def _domain_dependencies() -> dict[str, set[str]]:
    """domain -> the other domains its modules reach, directly or through shared modules
    (backend/precompute.py, say), which belong to no domain."""
    graph = _backend_import_graph()
    deps: dict[str, set[str]] = {d: set() for d in DOMAINS}
    for start in graph:
        home = _domain(start)
        if home is None:
            continue
        seen, todo = {start}, list(graph[start])
        while todo:
            module = todo.pop()
            if module in seen:
                continue
            seen.add(module)
            there = _domain(module)
            if there is None:
                todo += graph[module]
            elif there != home:
                deps[home].add(there)
    return deps


def test_domain_packages_depend_on_each_other_without_cycles() -> None:
    deps = _domain_dependencies()
    try:
        order = list(graphlib.TopologicalSorter(deps).static_order())
    except graphlib.CycleError as e:
        pytest.fail(f"domain packages import each other in a cycle: {e.args[1]}")
    # Families are made of the catalog's units; the catalog knows nothing of families, and
    # the unit page composes the two.
    assert "families" not in deps["catalog"]
    assert {"catalog", "families"} <= deps["unitpage"]
    assert order.index("catalog") < order.index("families") < order.index("unitpage")


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_docker_compose_file_is_valid() -> None:
    out = subprocess.run(
        ["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **COMPOSE_SECRETS},
    )
    assert out.returncode == 0, out.stderr
    for service in ("postgres", "redis", "minio", "api", "worker", "flower"):
        assert f"  {service}:" in out.stdout
    assert "driver: nvidia" in out.stdout
    services = yaml.safe_load(out.stdout)["services"]
    # The API checks a dataset folder exists when it is registered; it never writes there.
    assert "datasets:/datasets:ro" in services["api"]["volumes"]
    assert "datasets:/datasets:ro" in services["worker"]["volumes"]
    for app in ("api", "worker"):
        assert {"postgres", "redis", "minio"} <= set(services[app]["depends_on"])
        env = services[app]["environment"]
        assert env["MICROSCOPE_S3_ENDPOINT_URL"] == "http://minio:9000"
        assert env["MICROSCOPE_S3_ACCESS_KEY"] == services["minio"]["environment"][
            "MINIO_ROOT_USER"
        ]
