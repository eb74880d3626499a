"""Nothing is exposed by default: production refuses default secrets and `CORS *`, datasets
come only from the dataset roots, and the compose file publishes nothing without a password."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from backend.config import Settings
from tests.backend.test_boundaries import COMPOSE_SECRETS, ROOT

PROD = {
    "env": "production",
    "admin_token": "x" * 32,
    "database_url": "postgresql+psycopg://u@db/microscope",
    "broker_url": "redis://redis:6379/0",
}


def test_production_refuses_cors_for_everyone(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="CORS"):
        Settings(data_dir=tmp_path, cors_origins=["*"], **PROD)
    assert Settings(data_dir=tmp_path, **PROD).cors_origins == []  # none unless listed
    assert Settings(data_dir=tmp_path).cors_origins == ["*"]  # development reads from anywhere


@pytest.mark.parametrize("secret", ["minioadmin", "microscope-secret", "short"])
def test_production_refuses_default_or_short_s3_secrets(tmp_path: Path, secret: str) -> None:
    with pytest.raises(ValidationError, match="S3_SECRET_KEY"):
        Settings(data_dir=tmp_path, storage_url="s3://b", s3_secret_key=secret, **PROD)
    ok = Settings(data_dir=tmp_path, storage_url="s3://b", s3_secret_key="s" * 24, **PROD)
    assert ok.s3_secret_key == "s" * 24


@pytest.mark.parametrize(
    # ... and paths that cannot be resolved at all: a user's home that does not exist (found
    # by the OpenAPI fuzzer: it answered 500), a NUL byte.
    "path",
    ["/", "/etc", "{data}/../..", "{root}/../outside", "~0", "~no-such-user", "{root}/a\x00b"],
)
def test_datasets_only_from_the_dataset_roots(client, admin, settings, path: str) -> None:
    root = settings.dataset_roots[0]
    (root.parent / "outside").mkdir(exist_ok=True)
    folder = path.format(data=settings.data_dir, root=root)
    r = client.post("/api/v1/datasets", json={"path": folder, "slug": "x"}, headers=admin)
    assert r.status_code == 422 and "dataset root" in r.json()["detail"], r.text
    assert client.get("/api/v1/datasets").json() == []


def test_a_symlink_out_of_the_root_is_refused(client, admin, settings, tmp_path) -> None:
    link = settings.dataset_roots[0] / "sneaky"
    link.symlink_to("/etc")
    r = client.post("/api/v1/datasets", json={"path": str(link)}, headers=admin)
    assert r.status_code == 422 and "dataset root" in r.json()["detail"]
    inside = settings.dataset_roots[0] / "photos"
    inside.mkdir()
    r = client.post("/api/v1/datasets", json={"path": str(inside)}, headers=admin)
    assert r.status_code == 202, r.text


def _compose(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **env},
    )


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_compose_publishes_nothing_without_a_password() -> None:
    for missing in ("MINIO_ROOT_PASSWORD", "FLOWER_BASIC_AUTH"):
        env = {k: v for k, v in COMPOSE_SECRETS.items() if k != missing}
        out = _compose({**env, missing: ""})
        assert out.returncode != 0 and missing in out.stderr, missing
    out = _compose(COMPOSE_SECRETS)
    assert out.returncode == 0, out.stderr
    services = yaml.safe_load(out.stdout)["services"]
    assert "ports" not in services["minio"]  # neither S3 nor the console
    flower = services["flower"]
    assert "--basic_auth=ops:compose-test-flower" in flower["command"]
    assert all(str(p).startswith("127.0.0.1:") for p in flower["ports"]), flower
    assert services["api"]["environment"]["MICROSCOPE_CORS_ORIGINS"] == "[]"
