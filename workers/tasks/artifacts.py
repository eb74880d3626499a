"""Publishing artifacts: bytes into the store first, then the row that points at them."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel
from sqlalchemy import delete
from sqlalchemy.orm import Session

from backend import __version__
from backend.db.base import utcnow
from backend.db.models import ARTIFACT_KINDS, Artifact, Layer, Model
from backend.storage import ObjectStore, artifact_key, params_hash


def publish(
    session: Session,
    store: ObjectStore,
    *,
    model: Model,
    layer: Layer | None,
    unit: int | None,
    kind: str,
    variant: str,
    params: dict[str, Any],
    data: bytes,
    ext: str,
    content_type: str,
    meta: dict[str, Any] | None = None,
) -> Artifact:
    """Store ``data`` whole, then upsert its row (readers never see a row without bytes)."""
    if kind not in ARTIFACT_KINDS:
        raise ValueError(f"unknown artifact kind {kind!r}")
    ph = params_hash({**params, "variant": variant})
    key = artifact_key(model.slug, layer.name if layer else None, unit, kind, ph, ext, variant)
    store.put(key, data, content_type)
    layer_id = layer.id if layer else None
    session.execute(
        delete(Artifact).where(
            Artifact.model_id == model.id,
            Artifact.layer_id == layer_id,
            Artifact.unit_index == unit,
            Artifact.kind == kind,
            Artifact.params_hash == ph,
        )
    )
    art = Artifact(
        kind=kind,
        model_id=model.id,
        layer_id=layer_id,
        unit_index=unit,
        variant=variant,
        params_hash=ph,
        storage_key=key,
        content_type=content_type,
        meta=meta,
        provenance={
            "model_checksum": model.weights_checksum,
            "model_spec": model.spec,
            "params": params,
            "code_version": __version__,
            "created_at": utcnow().isoformat(),
        },
        created_at=utcnow(),
    )
    session.add(art)
    return art


def publish_json(
    session: Session, store: ObjectStore, payload: BaseModel | dict[str, Any], **fields: Any
) -> Artifact:
    """``payload`` (one of the models in ``contracts.artifacts`` or ``contracts.weight_views``: the
    shape pages read) as a JSON
    artifact; ``fields`` are publish's (model, layer, unit, kind, variant, params, meta)."""
    return publish(
        session,
        store,
        # Plots without a contract model yet (condprob, typographic) pass a plain dict.
        data=(
            payload.model_dump_json().encode()
            if isinstance(payload, BaseModel)
            else json.dumps(payload).encode()
        ),
        ext="json",
        content_type="application/json",
        **fields,
    )
