"""Task: register a model (load it, enumerate layers and units, record them)."""

from __future__ import annotations

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from backend.db.models import Job, Layer, Model, Unit
from contracts.jobs import TASK_REGISTER_MODEL
from workers.ml.layers import enumerate_layers
from workers.tasks.jobrun import Progress, job_task
from workers.tasks.runtime import cached_model, device


def register(session: Session, job: Job, progress: Progress) -> str:
    """Load the model, enumerate its layers with one dry forward pass, write layers + units."""
    model = session.get(Model, job.model_id)
    if model is None:
        return "model was deleted"
    have = set(session.scalars(select(Layer.name).where(Layer.model_id == model.id)))
    if model.state == "ready" and have:
        return "already registered"
    model.state = "registering"
    session.commit()
    progress(0, 3, "loading weights")
    # Kept loaded: the jobs queued with the model (weight views, mining) come next.
    loaded = cached_model(model.spec, device())
    progress(1, 3, "enumerating layers")
    layers = enumerate_layers(loaded, all_layers=True)
    model.family = loaded.family
    model.weights_checksum = loaded.checksum
    model.pretrained = loaded.pretrained
    model.preprocessing = loaded.preprocess.to_dict()
    model.input_size = loaded.preprocess.input_size
    model.class_names = loaded.class_names
    progress(2, 3, f"writing {len(layers)} layers")
    for info in layers:
        if info.name in have:
            continue
        layer = Layer(
            model_id=model.id,
            name=info.name,
            module_path=info.module_path,
            kind=info.kind,
            unit_count=info.unit_count,
            output_shape=list(info.output_shape),
            layout=info.layout.to_dict(),
            order=info.order,
            is_default=info.default,
            branches=[b.model_dump() for b in info.branches] if info.branches else None,
        )
        session.add(layer)
        session.flush()
        session.execute(
            insert(Unit), [{"layer_id": layer.id, "index": i} for i in range(info.unit_count)]
        )
    model.state = "ready"
    model.error = None
    n_units = sum(x.unit_count for x in layers)
    return f"{len(layers)} layers, {n_units} units"


def mark_failed(session: Session, job: Job, exc: Exception) -> None:
    model = session.get(Model, job.model_id)
    if model is not None:
        model.state = "failed"
        model.error = f"{type(exc).__name__}: {exc}"


register_model = job_task(TASK_REGISTER_MODEL, register, mark_failed)
