"""Publishing artifacts: bytes into the store first, then the row that points at them."""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from sqlalchemy import and_, delete, insert, or_
from sqlalchemy.orm import Session

from backend import __version__
from backend.db.base import utcnow
from backend.db.models import ARTIFACT_KINDS, Artifact, Layer, Model
from backend.storage import ObjectInfo, ObjectStore, artifact_key, params_hash


class WriteBehind(ObjectStore):
    """``store`` with its puts run on an I/O thread pool: a local put waits on fsync and
    rename, an S3 put on the network, both without the GIL, so the drawing threads go on
    drawing (the puts were a quarter of the drawing threads' time when publishing a mined
    layer, under py-spy). ``drain`` waits for every put
    so far, then raises the first failure: call it before writing the rows that point at them.
    A get of a key put but not yet drained may miss: only new keys go through it."""

    def __init__(self, store: ObjectStore, threads: int = 4) -> None:
        self.store = store
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="put")
        self._lock = threading.Lock()
        self._writes: list[Future[None]] = []

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        write = self._pool.submit(self.store.put, key, data, content_type)
        with self._lock:
            self._writes.append(write)

    def drain(self) -> None:
        with self._lock:
            writes, self._writes = self._writes, []
        wait(writes)
        for w in writes:
            w.result()

    def close(self) -> None:
        """Drain, then stop the pool."""
        try:
            self.drain()
        finally:
            self._pool.shutdown()

    def get(self, key: str) -> bytes:
        return self.store.get(key)

    def stat(self, key: str) -> ObjectInfo:
        return self.store.stat(key)

    def delete(self, key: str) -> None:
        self.store.delete(key)

    def list(self, prefix: str = "") -> list[str]:
        return self.store.list(prefix)


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


def record_units(
    session: Session,
    *,
    model: Model,
    layer: Layer | None,
    stored: Mapping[int | None, Sequence[Stored]],
    replace_kinds: Sequence[str] = (),
) -> None:
    """Upsert the rows of several units' stored artifacts: a row replaces the unit's row of
    the same kind and params, and of any kind in ``replace_kinds`` (whose params change with
    their content). Call only once their bytes are stored, so readers never see a row without
    bytes. One delete per distinct set of (kind, params) and one insert for all the units
    (publishing a mined layer wrote 5 statements per unit before)."""
    groups: dict[tuple[frozenset[tuple[str, str]], frozenset[str]], list[int | None]] = defaultdict(
        list
    )
    for unit, arts in stored.items():
        if arts:
            pairs = frozenset((s.kind, s.params_hash) for s in arts if s.kind not in replace_kinds)
            kinds = frozenset(s.kind for s in arts if s.kind in replace_kinds)
            groups[(pairs, kinds)].append(unit)
    if not groups:
        return
    layer_id = layer.id if layer else None
    for (pairs, kinds), units in groups.items():
        same = [and_(Artifact.kind == k, Artifact.params_hash == ph) for k, ph in sorted(pairs)]
        if kinds:
            same.append(Artifact.kind.in_(sorted(kinds)))
        known = [u for u in units if u is not None]
        which = [Artifact.unit_index.in_(known)] if known else []
        if len(known) < len(units):
            which.append(Artifact.unit_index.is_(None))
        session.execute(
            delete(Artifact).where(
                Artifact.model_id == model.id,
                Artifact.layer_id == layer_id,
                or_(*which),
                or_(*same),
            )
        )
    now = utcnow()
    rows = [
        {
            "kind": s.kind,
            "model_id": model.id,
            "layer_id": layer_id,
            "unit_index": unit,
            "variant": s.variant,
            "params_hash": s.params_hash,
            "storage_key": s.key,
            "content_type": s.content_type,
            "meta": s.meta,
            "provenance": {
                "model_checksum": model.weights_checksum,
                "model_spec": model.spec,
                "params": s.params,
                "code_version": __version__,
                "created_at": now.isoformat(),
            },
            "created_at": now,
        }
        for unit, arts in stored.items()
        for s in arts
    ]
    session.execute(insert(Artifact), rows)


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
) -> None:
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
    record_units(session, model=model, layer=layer, stored={unit: [stored]})


def publish_json(
    session: Session, store: ObjectStore, payload: BaseModel | dict[str, Any], **fields: Any
) -> None:
    """``payload`` (one of the models in ``contracts.artifacts`` or ``contracts.weight_views``: the
    shape pages read) as a JSON
    artifact; ``fields`` are publish's (model, layer, unit, kind, variant, params, meta)."""
    publish(
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
