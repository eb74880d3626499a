"""One validated settings class (prefix MICROSCOPE_)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_data_dir() -> Path:
    return Path.cwd() / "data"


class Settings(BaseSettings):
    """Runtime configuration; every field reads MICROSCOPE_<NAME> from the environment."""

    model_config = SettingsConfigDict(env_prefix="MICROSCOPE_", env_file=".env", extra="ignore")

    env: Literal["development", "test", "production"] = "development"
    data_dir: Path = Field(default_factory=_default_data_dir)
    # Defaults derive from data_dir (see _fill_defaults): SQLite file, embedded SQL broker,
    # local object store.
    database_url: str = ""
    broker_url: str = ""
    storage_url: str = ""
    s3_endpoint_url: str | None = None
    s3_access_key: str | None = None
    s3_secret_key: str | None = None
    s3_region: str = "us-east-1"
    admin_token: str | None = None
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    public_url: str = "http://127.0.0.1:8000"
    featvis_steps: int = 512  # optimisation steps per render (Lucid's default)
    cors_origins: list[str] = ["*"]
    # The web process's cache of rendered catalog pages (backend/pagecache.py); 0 turns it off.
    page_cache_mb: int = 64
    # How stale a cached page may be after another process's commit, at most.
    page_cache_check_seconds: float = 0.02
    # How long `serve` and `worker` wait at start for the database and the object store (all
    # containers of the compose file start at once).
    start_timeout: float = 60.0

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        self.data_dir = self.data_dir.expanduser().resolve()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'microscope.sqlite'}"
        if not self.broker_url:
            # kombu's SQLAlchemy transport on SQLite: a real broker that needs no server.
            self.broker_url = f"sqla+sqlite:///{self.data_dir / 'broker.sqlite'}"
        if not self.storage_url:
            self.storage_url = f"file://{self.data_dir / 'objects'}"
        if self.env == "production":
            if not self.admin_token or len(self.admin_token) < 16:
                raise ValueError(
                    "MICROSCOPE_ENV=production needs MICROSCOPE_ADMIN_TOKEN (16+ characters)"
                )
            if self.database_url.startswith("sqlite") or self.broker_url.startswith("sqla+"):
                raise ValueError(
                    "MICROSCOPE_ENV=production refuses the embedded SQLite database/broker; "
                    "set MICROSCOPE_DATABASE_URL and MICROSCOPE_BROKER_URL"
                )
        return self

    @property
    def embedded_broker(self) -> bool:
        return self.broker_url.startswith("sqla+")

    def resolved_device(self) -> str:
        """The device name; 'auto' is resolved by the worker (cuda when present)."""
        return self.device


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings (cached; tests clear the cache)."""
    return Settings()
