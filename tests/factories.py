"""Factories for rows the tests need (real rows in the real database, no mocks)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import insert
from sqlalchemy.orm import Session

from backend.db.models import Artifact, Layer, Model, Unit
from backend.storage import ObjectStore, artifact_key, params_hash


def make_model(session: Session, slug: str = "tiny", *, state: str = "ready") -> Model:
    m = Model(
        slug=slug,
        spec=f"timm:{slug}",
        source="timm",
        name=slug,
        weights=None,
        pretrained=False,
        state=state,
        family="convnet",
        input_size=64,
    )
    session.add(m)
    session.flush()
    return m


def make_layer(
    session: Session, model: Model, name: str = "blocks.1", units: int = 8, order: int = 0
) -> Layer:
    layer = Layer(
        model_id=model.id,
        name=name,
        module_path=name,
        kind="stage",
        unit_count=units,
        output_shape=[units, 7, 7],
        layout={"kind": "nchw", "prefix_tokens": 0},
        order=order,
        is_default=True,
    )
    session.add(layer)
    session.flush()
    session.execute(insert(Unit), [{"layer_id": layer.id, "index": i} for i in range(units)])
    return layer


def make_artifact(
    session: Session,
    store: ObjectStore,
    model: Model,
    layer: Layer,
    unit: int,
    kind: str = "featvis",
    data: bytes = b"RIFF....WEBP",
    ext: str = "webp",
    content_type: str = "image/webp",
) -> Artifact:
    params = {"objective": "channel", "steps": 8}
    ph = params_hash(params)
    key = artifact_key(model.slug, layer.name, unit, kind, ph, ext)
    store.put(key, data, content_type)
    a = Artifact(
        kind=kind,
        model_id=model.id,
        layer_id=layer.id,
        unit_index=unit,
        variant="channel",
        params_hash=ph,
        storage_key=key,
        content_type=content_type,
        meta=None,
        provenance={"model_checksum": "x", "params": params, "code_version": "test"},
        created_at=datetime.now(UTC),
    )
    session.add(a)
    session.flush()
    return a
