"""Publishing artifacts: bytes into the store first, then the row that points at them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from sqlalchemy import and_, delete, or_
from sqlalchemy.orm import Session

from backend import __version__
from backend.db.base import utcnow
from backend.db.models import ARTIFACT_KINDS, Artifact, Layer, Model
from backend.storage import ObjectStore, artifact_key, params_hash


@dataclass(frozen=True)
class Stored:
    """An artifact whose bytes are in the store and whose row is not written yet."""

    kind: str
    variant: str
    params: dict[str, Any]
    params_hash: str
    key: str
    content_type: str
    meta: dict[str, Any] | None


def store_artifact(
    store: ObjectStore,
    *,
    model_slug: str,
    layer_name: str | None,
    unit: int | None,
    kind: str,
    variant: str,
    params: dict[str, Any],
    data: bytes,
    ext: str,
    content_type: str,
    meta: dict[str, Any] | None = None,
) -> Stored:
    """Store ``data`` whole under its key. No session and no ORM objects: safe on a drawing
    thread while the task's thread writes rows."""
    if kind not in ARTIFACT_KINDS:
        raise ValueError(f"unknown artifact kind {kind!r}")
    ph = params_hash({**params, "variant": variant})
    key = artifact_key(model_slug, layer_name, unit, kind, ph, ext, variant)
    store.put(key, data, content_type)
    return Stored(kind, variant, params, ph, key, content_type, meta)


def record_artifacts(
    session: Session,
    *,
    model: Model,
    layer: Layer | None,
    unit: int | None,
    stored: Sequence[Stored],
) -> list[Artifact]:
    """Upsert the rows of one unit's stored artifacts (one delete for all of them); call only
    once their bytes are stored, so readers never see a row without bytes."""
    if not stored:
        return []
    layer_id = layer.id if layer else None
    session.execute(
        delete(Artifact).where(
            Artifact.model_id == model.id,
            Artifact.layer_id == layer_id,
            Artifact.unit_index == unit,
            or_(
                *(
                    and_(Artifact.kind == s.kind, Artifact.params_hash == s.params_hash)
                    for s in stored
                )
            ),
        )
    )
    now = utcnow()
    arts = [
        Artifact(
            kind=s.kind,
            model_id=model.id,
            layer_id=layer_id,
            unit_index=unit,
            variant=s.variant,
            params_hash=s.params_hash,
            storage_key=s.key,
            content_type=s.content_type,
            meta=s.meta,
            provenance={
                "model_checksum": model.weights_checksum,
                "model_spec": model.spec,
                "params": s.params,
                "code_version": __version__,
                "created_at": now.isoformat(),
            },
            created_at=now,
        )
        for s in stored
    ]
    session.add_all(arts)
    return arts


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
    stored = store_artifact(
        store,
        model_slug=model.slug,
        layer_name=layer.name if layer else None,
        unit=unit,
        kind=kind,
        variant=variant,
        params=params,
        data=data,
        ext=ext,
        content_type=content_type,
        meta=meta,
    )
    return record_artifacts(session, model=model, layer=layer, unit=unit, stored=[stored])[0]


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
