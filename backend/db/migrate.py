"""Apply Alembic migrations programmatically (the only way the schema changes)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, text

from backend.db.session import get_engine

ROOT = Path(__file__).resolve().parents[2]
# Key of the PostgreSQL advisory lock that serialises migrations (any constant bigint that
# nothing else in the database uses).
MIGRATION_LOCK_KEY = 0x6D6963726F736370  # "microscp"


def alembic_config(url: str) -> Config:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    cfg.attributes["url"] = url
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` to ``revision``."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    cfg = alembic_config(url)
    with get_engine(url).begin() as conn:
        _serialise(conn)
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def downgrade(url: str, revision: str = "base") -> None:
    cfg = alembic_config(url)
    with get_engine(url).begin() as conn:
        _serialise(conn)
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)


def _serialise(conn: Connection) -> None:
    """On PostgreSQL, wait for any other process's migration to commit before reading the
    schema's version: many containers start at once and each runs ``upgrade``; without this
    all but one fail creating tables that another is creating. The lock is transaction-scoped,
    so it is released by the commit (or rollback) that ends the migration. SQLite (one host,
    the embedded default) needs none."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
