"""Factories for rows the tests need (real rows in the real database, no mocks)."""

from __future__ import annotations

import hashlib
import io
import uuid
from datetime import UTC, datetime

import numpy as np
from sqlalchemy import insert
from sqlalchemy.orm import Session

from backend.db.models import Artifact, Dataset, Job, Layer, Model, Unit
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


def make_dataset(session: Session, slug: str = "photos") -> Dataset:
    ds = Dataset(slug=slug, source=f"/data/{slug}", state="ready", image_count=4)
    session.add(ds)
    session.flush()
    return ds


def make_job(
    session: Session,
    kind: str,
    *,
    state: str = "queued",
    queue: str = "gpu",
    model: Model | None = None,
    dataset: Dataset | None = None,
) -> Job:
    """A job row as its enqueuer leaves it (nothing is sent to a broker)."""
    job = Job(
        kind=kind,
        dedupe_key=f"{kind}:{uuid.uuid4().hex}",
        params={},
        queue=queue,
        state=state,
        model_id=model.id if model else None,
        dataset_id=dataset.id if dataset else None,
    )
    session.add(job)
    session.flush()
    return job


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
    unit: int | None,  # None: an artifact of the whole layer
    kind: str = "featvis",
    data: bytes = b"RIFF....WEBP",
    ext: str = "webp",
    content_type: str = "image/webp",
    variant: str = "channel",
) -> Artifact:
    params = {"objective": "channel", "steps": 8}
    ph = params_hash(params if variant == "channel" else {**params, "variant": variant})
    key = artifact_key(model.slug, layer.name, unit, kind, ph, ext)
    store.put(key, data, content_type)
    a = Artifact(
        kind=kind,
        model_id=model.id,
        layer_id=layer.id,
        unit_index=unit,
        variant=variant,
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


def unit_vectors(count: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    """Random unit-norm rows, (count, dim), as text vectors of units."""
    vecs = np.random.default_rng(seed).normal(size=(count, dim)).astype(np.float32)
    return vecs / np.linalg.norm(vecs, axis=1, keepdims=True)


def make_search_index(
    session: Session,
    store: ObjectStore,
    model: Model,
    layers: list[Layer],
    unit_vecs: np.ndarray,
    vocab: dict[str, np.ndarray],
) -> Artifact:
    """A ``search_index`` artifact shaped like the text-views task's: ``unit_vecs`` (U, D)
    for the units of ``layers`` in order, and ``vocab``'s vectors (normalised here)."""
    assert unit_vecs.shape[0] == sum(layer.unit_count for layer in layers)
    words = list(vocab)
    vocab_vecs = np.stack([np.asarray(vocab[w], dtype=np.float32) for w in words])  # (V, D)
    vocab_vecs /= np.linalg.norm(vocab_vecs, axis=1, keepdims=True)
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        layer_names=np.array([layer.name for layer in layers]),
        unit_layer=np.concatenate(
            [np.full(layer.unit_count, i) for i, layer in enumerate(layers)]
        ).astype(np.int32),
        unit_index=np.concatenate([np.arange(layer.unit_count) for layer in layers]).astype(
            np.int32
        ),
        unit_vecs=unit_vecs.astype(np.float32),
        vocab=np.array(words),
        vocab_vecs=vocab_vecs.astype(np.float16),  # as the task stores them
    )
    blob = buf.getvalue()
    params = {"sha": hashlib.sha256(blob).hexdigest()}
    ph = params_hash(params)
    key = artifact_key(model.slug, None, None, "search_index", ph, "npz")
    store.put(key, blob, "application/octet-stream")
    a = Artifact(
        kind="search_index",
        model_id=model.id,
        layer_id=None,
        unit_index=None,
        variant="",
        params_hash=ph,
        storage_key=key,
        content_type="application/octet-stream",
        meta={"units": int(unit_vecs.shape[0]), "vocab": len(words)},
        provenance={"model_checksum": "x", "params": params, "code_version": "test"},
        created_at=datetime.now(UTC),
    )
    session.add(a)
    session.flush()
    return a
