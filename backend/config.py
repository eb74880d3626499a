"""One validated settings class (prefix MICROSCOPE_)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Secrets that ship in examples (MinIO's own default, the compose file's old default).
DEFAULT_S3_SECRETS = frozenset({"minioadmin", "microscope-secret"})


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
    # Origins whose pages may read the API; default: any in development, none in production
    # (which refuses "*").
    cors_origins: list[str] | None = None
    # The web process's cache of rendered catalog pages (backend/pagecache.py); 0 turns it off.
    page_cache_mb: int = 64
    # How stale a cached page may be after another process's commit, at most.
    page_cache_check_seconds: float = 0.02
    # Unit pages and unit JSON computed at once per web process (backend/deps.py in_session):
    # past a few, threads only fight over the GIL (benchmarks/server.py on 2 cores: 4 served
    # 1.2x the unit JSON and 1.5x the unit pages of 20). Raise it when the database or S3 is
    # far away.
    read_concurrency: int = Field(default=4, ge=1)
    # Admin browser sessions: signed with this secret (default: derived from the admin token),
    # valid this long.
    session_secret: str | None = None
    session_hours: float = Field(default=12.0, gt=0)
    # Request bodies past this are refused (413) before they are read.
    max_body_kb: int = Field(default=1024, ge=1)
    # Dataset images (files and tar members) past this are skipped as "too large", unread.
    max_image_mb: int = Field(default=64, ge=1)
    # DataLoader processes decoding images beside a mining pass; None: on a GPU cores - 1 (at
    # most 4), on the CPU none (workers/tasks/runtime.py loader_workers).
    loader_workers: int | None = Field(default=None, ge=0)
    # Folders datasets may be registered from (default: DATA_DIR/datasets, where the demo's
    # photos are assembled); anything else, `/` included, is refused.
    dataset_roots: list[Path] = []
    # Jobs (backend/jobs/reconcile.py): a running job's lease (renewed by its worker's
    # heartbeat every quarter of it); how long a queued job's last send may be silent before it
    # is sent again; how long a job may wait on its inputs; how often each worker reconciles.
    job_lease_seconds: float = Field(default=120.0, gt=0)
    job_resend_seconds: float = Field(default=300.0, gt=0)
    job_wait_hours: float = Field(default=48.0, gt=0)
    reconcile_seconds: float = Field(default=30.0, gt=0)
    # How long `serve` and `worker` wait at start for the database and the object store (all
    # containers of the compose file start at once).
    start_timeout: float = 60.0
    # Images per mining shard job (default 512): smaller shards spread one dataset over more
    # workers, larger ones save fewer reducer states.
    mining_shard_size: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        self.data_dir = self.data_dir.expanduser().resolve()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'microscope.sqlite'}"
        if not self.broker_url:
            # kombu's SQLAlchemy transport on SQLite: a real broker that needs no server.
            self.broker_url = f"sqla+sqlite:///{self.data_dir / 'broker.sqlite'}"
        if not self.dataset_roots:
            self.dataset_roots = [self.data_dir / "datasets"]
        self.dataset_roots = [p.expanduser().resolve() for p in self.dataset_roots]
        if not self.storage_url:
            self.storage_url = f"file://{self.data_dir / 'objects'}"
        if self.env == "production":
            self._refuse_unsafe_production()
        if self.cors_origins is None:
            self.cors_origins = [] if self.env == "production" else ["*"]
        return self

    def _refuse_unsafe_production(self) -> None:
        if not self.admin_token or len(self.admin_token) < 16:
            raise ValueError(
                "MICROSCOPE_ENV=production needs MICROSCOPE_ADMIN_TOKEN (16+ characters)"
            )
        if self.cors_origins and "*" in self.cors_origins:
            raise ValueError(
                "MICROSCOPE_ENV=production refuses MICROSCOPE_CORS_ORIGINS='*'; list the origins"
            )
        # No secret at all is fine: boto3 then uses the machine's own credentials.
        secret = self.s3_secret_key
        if secret is not None and (secret in DEFAULT_S3_SECRETS or len(secret) < 16):
            raise ValueError(
                "MICROSCOPE_ENV=production refuses a default or short MICROSCOPE_S3_SECRET_KEY "
                "(16+ characters)"
            )
        if self.database_url.startswith("sqlite") or self.broker_url.startswith("sqla+"):
            raise ValueError(
                "MICROSCOPE_ENV=production refuses the embedded SQLite database/broker; "
                "set MICROSCOPE_DATABASE_URL and MICROSCOPE_BROKER_URL"
            )

    @property
    def embedded_broker(self) -> bool:
        return self.broker_url.startswith("sqla+")


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings (cached; tests clear the cache)."""
    return Settings()
