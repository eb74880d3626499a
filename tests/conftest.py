"""Shared fixtures: real databases built from the migrations, real brokers, real storage.

By default the suite runs on SQLite and kombu's SQL broker. With MICROSCOPE_TEST_DATABASE_URL
(a PostgreSQL server URL) and MICROSCOPE_TEST_BROKER_URL (redis://...) the database and queue
tests run against those services instead; each session gets a fresh database.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from backend.config import Settings, get_settings
from backend.db.base import Base
from backend.db.migrate import upgrade
from backend.db.session import get_engine, get_sessionmaker
from tests.seaweedfs import S3Server, seaweedfs

DB_ENV = "MICROSCOPE_TEST_DATABASE_URL"
BROKER_ENV = "MICROSCOPE_TEST_BROKER_URL"
ADMIN_TOKEN = "test-admin-token-0123456789"
OUTPUT = Path(__file__).resolve().parent.parent / "test-output"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Every test that touches the database is marked `db` so the test command can run just
    # those again on PostgreSQL + Redis.
    for item in items:
        if "settings" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.db)


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    base = os.environ.get(DB_ENV)
    if not base:
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.sqlite'}"
        upgrade(url)
        yield url
        return
    name = f"microscope_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = base.rsplit("/", 1)[0] + "/" + name
    upgrade(url)
    yield url
    get_engine(url).dispose()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3 server (SeaweedFS) on loopback for the whole session, started on first use."""
    with seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture
def settings(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Settings]:
    """Settings for one test: its own data dir, object store and broker; a clean database."""
    data = tmp_path / "data"
    env = {
        "MICROSCOPE_ENV": "test",
        "MICROSCOPE_DATA_DIR": str(data),
        "MICROSCOPE_DATABASE_URL": database_url,
        "MICROSCOPE_BROKER_URL": os.environ.get(BROKER_ENV)
        or f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}",
        "MICROSCOPE_STORAGE_URL": f"file://{tmp_path / 'objects'}",
        "MICROSCOPE_ADMIN_TOKEN": ADMIN_TOKEN,
        # Tests register datasets from their own temporary folders.
        "MICROSCOPE_DATASET_ROOTS": json.dumps([str(tmp_path)]),
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()
    engine = get_engine(database_url)
    with engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            if table.name != "catalog_version":  # its one row is the page cache's validator
                conn.execute(table.delete())


@pytest.fixture
def session(settings: Settings):  # type: ignore[no-untyped-def]
    s = get_sessionmaker(settings.database_url)()
    yield s
    s.rollback()
    s.close()


@pytest.fixture
def client(settings: Settings):  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from backend.app import create_app

    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def admin() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(settings) -> Iterator[str]:  # type: ignore[no-untyped-def]
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "backend.app:app_factory",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        cwd=OUTPUT.parent,
        env=dict(os.environ),
    )
    url = f"http://127.0.0.1:{port}"
    # Importing the app takes seconds, and /healthz checks the database and the broker: on a
    # loaded 2-core machine that took over 10 s. Wait up to 60 s.
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/healthz", timeout=10)
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("server did not start") from None
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def worker(settings, request) -> Iterator[subprocess.Popen[bytes]]:  # type: ignore[no-untyped-def]
    """A real Celery worker process on the test's broker and database; its log is kept."""
    OUTPUT.mkdir(exist_ok=True)
    log_path = OUTPUT / f"worker-{request.node.name}.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "workers.celery_app",
            "worker",
            "-Q",
            "interactive,gpu,cpu",
            "--pool",
            "solo",
            "--loglevel",
            "INFO",
            "--without-gossip",
            "--without-mingle",
            "--hostname",
            f"test-{os.getpid()}@%h",
        ],
        cwd=OUTPUT.parent,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    yield proc
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:  # still inside a task: warm shutdown would wait for it
        proc.kill()
        proc.wait(10)
    log.close()
