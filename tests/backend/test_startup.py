"""Many containers start at once: migrations serialise, start-up waits for its services."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from backend.cli import app
from backend.config import Settings
from backend.startup import ServicesUnavailable, wait_for_services
from tests.conftest import DB_ENV
from tests.seaweedfs import S3Server, seaweedfs

ROOT = Path(__file__).resolve().parents[2]

MIGRATE_AT = (
    "import sys, time\n"
    "from backend.db.migrate import upgrade\n"
    "time.sleep(max(0.0, float(sys.argv[2]) - time.time()))\n"
    "upgrade(sys.argv[1])\n"
)


@pytest.fixture
def empty_postgres() -> Iterator[str]:
    """A new, empty PostgreSQL database (no migrations applied)."""
    base = os.environ.get(DB_ENV, "")
    if not base.startswith("postgresql"):
        pytest.skip(f"needs PostgreSQL ({DB_ENV})")
    name = f"microscope_migrate_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield base.rsplit("/", 1)[0] + "/" + name
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.mark.db
def test_concurrent_migrations_on_postgres_all_succeed(empty_postgres: str) -> None:
    # Four processes (containers, in the compose file) upgrade the same empty database at the
    # same instant; without the advisory lock all but one fail on "relation already exists".
    start_at = time.time() + 3.0
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", MIGRATE_AT, empty_postgres, str(start_at)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], "\n".join(outputs)
    heads = sorted(p.stem.split("_")[0] for p in (ROOT / "migrations" / "versions").glob("0*.py"))
    engine = create_engine(empty_postgres)
    with engine.connect() as conn:
        versions = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
        assert conn.execute(text("SELECT count(*) FROM catalog_version")).scalar_one() == 1
    engine.dispose()
    assert len(versions) == 1 and versions[0].startswith(heads[-1])


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _s3_settings(settings: Settings, endpoint: str, server: S3Server | None = None) -> Settings:
    return settings.model_copy(
        update={
            "storage_url": "s3://late-bucket",
            "s3_endpoint_url": endpoint,
            "s3_access_key": server.access_key if server else "microscope-test",
            "s3_secret_key": server.secret_key if server else "microscope-test-secret",
        }
    )


def test_waits_for_each_service_in_turn_and_reports_once() -> None:
    calls: list[str] = []

    def flaky(_: Settings) -> None:
        calls.append("flaky")
        if len(calls) < 3:
            raise ConnectionRefusedError("not yet")

    waited: list[str] = []
    wait_for_services(
        Settings(),
        timeout=10,
        interval=0.01,
        on_wait=lambda name, e: waited.append(f"{name}: {e}"),
        checks={"database": flaky, "object store": lambda _: calls.append("store")},
    )
    assert calls == ["flaky", "flaky", "flaky", "store"]
    assert waited == ["database: not yet"]


def test_gives_up_at_the_deadline_naming_the_service(settings: Settings) -> None:
    dead = _s3_settings(settings, f"http://127.0.0.1:{_closed_port()}")
    started = time.monotonic()
    with pytest.raises(ServicesUnavailable, match="the object store did not answer within 1 s"):
        wait_for_services(dead, timeout=1, interval=0.1)
    assert time.monotonic() - started < 30  # boto3's own retries included


def test_serve_exits_cleanly_when_a_service_never_comes(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MICROSCOPE_STORAGE_URL", "s3://late-bucket")
    monkeypatch.setenv("MICROSCOPE_S3_ENDPOINT_URL", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("MICROSCOPE_START_TIMEOUT", "1")
    from backend.config import get_settings

    get_settings.cache_clear()
    r = CliRunner().invoke(app, ["serve", "--port", str(_closed_port())])
    assert r.exit_code == 2
    # (Whether it first says it is waiting depends on how long the database took to answer.)
    assert "error: the object store did not answer within 1 s" in " ".join(r.output.split())


def test_start_up_outlasts_an_s3_server_that_comes_up_late(
    settings: Settings, tmp_path: Path
) -> None:
    # The containers start together; SeaweedFS answers seconds after the API does.
    port = _closed_port()
    late = _s3_settings(settings, f"http://127.0.0.1:{port}")
    outcome: list[BaseException | None] = []

    def start() -> None:
        try:
            wait_for_services(late, timeout=90, interval=0.2)
            outcome.append(None)
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            outcome.append(e)

    waiter = threading.Thread(target=start)
    waiter.start()
    time.sleep(1.0)
    assert outcome == []  # still waiting: nothing listens yet
    with seaweedfs(tmp_path / "weed", s3_port=port):
        waiter.join(90)
    assert outcome == [None]
