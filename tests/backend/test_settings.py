from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from backend.config import Settings


def test_embedded_defaults_derive_from_data_dir(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path)
    assert s.database_url == f"sqlite:///{tmp_path / 'microscope.sqlite'}"
    assert s.broker_url.startswith("sqla+sqlite:///")
    assert s.embedded_broker
    assert s.storage_url == f"file://{tmp_path / 'objects'}"


def test_production_refuses_missing_admin_token(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="ADMIN_TOKEN"):
        Settings(env="production", data_dir=tmp_path)


def test_production_refuses_embedded_services(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="embedded"):
        Settings(env="production", data_dir=tmp_path, admin_token="x" * 32)


def test_production_accepts_real_services(tmp_path: Path) -> None:
    s = Settings(
        env="production",
        data_dir=tmp_path,
        admin_token="x" * 32,
        database_url="postgresql+psycopg://u@db/microscope",
        broker_url="redis://redis:6379/0",
    )
    assert not s.embedded_broker


def test_env_prefix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MICROSCOPE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("MICROSCOPE_DEVICE", "cpu")
    s = Settings()
    assert s.data_dir == tmp_path.resolve()
    assert s.device == "cpu"
