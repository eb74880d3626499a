"""Task: feature visualizations for one block of units of one layer (GPU batches stay full)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.catalog.repository import CatalogRepository
from backend.config import get_settings
from backend.db.models import Artifact, Job, Layer
from backend.precompute import queue_featvis_blocks
from backend.storage import make_store
from contracts.jobs import (
    FINISHED_STATES,
    TASK_FEATVIS,
    TASK_FEATVIS_BULK,
    FeatvisBulkParams,
    FeatvisParams,
)
from contracts.layout import Layout
from workers.ml.featvis import render_units
from workers.ml.images import webp_bytes
from workers.tasks.artifacts import publish
from workers.tasks.cards import refresh_cards
from workers.tasks.facets import load_probe
from workers.tasks.jobrun import Progress, Waiting, job_task, params_of
from workers.tasks.runtime import cached_model, device, ready_model


def best_example_scores(session: Session, layer: Layer, units: list[int]) -> dict[int, float]:
    """Each unit's top dataset-example score (the yardstick a render should reach)."""
    rows = session.execute(
        select(Artifact.unit_index, Artifact.meta).where(
            Artifact.layer_id == layer.id,
            Artifact.kind == "dataset_examples",
            Artifact.unit_index.in_(units),
        )
    ).all()
    out = {}
    for u, meta in rows:
        stats = (meta or {}).get("stats") or {}
        if stats.get("max") is not None and u is not None:
            out[u] = float(stats["max"])
    return out


def render(session: Session, job: Job, progress: Progress) -> str:
    """Render the job's units with the requested objective and publish one WebP per image."""
    p = params_of(job, FeatvisParams)
    model = ready_model(session, p.model_id)
    layer = session.get(Layer, p.layer_id)
    if layer is None:
        raise ValueError("the layer of this job was deleted")
    start, stop = p.units
    units = list(range(start, min(stop, layer.unit_count)))
    if not units:
        raise ValueError(f"no units {start}..{stop} in layer {layer.name}")
    objective = p.objective
    store = make_store(get_settings())
    facet = p.facet
    probe = None
    if facet:
        found = CatalogRepository(session).facet_probes(model.id, facet)
        if not found:
            raise ValueError(f"model {model.slug} has no trained facet {facet!r}")
        probe = load_probe(store, found[0])
    # A facet render is its own variant beside the plain ones, named after the facet.
    name = f"facet-{facet}" if facet else objective
    session.commit()
    dev = device()
    loaded = cached_model(model.spec, dev)
    # Parameterize at the model's own input size: no upsampling, and early layers reach
    # their best dataset example's activation in fewer steps than at 128 px (measured).
    results = render_units(
        loaded.image_model,
        layer.module_path,
        Layout.from_dict(layer.layout),
        units,
        preprocess=loaded.preprocess,
        objective=objective,
        facet=probe,
        device=dev,
        progress=lambda d, t: progress(d, t, f"{layer.name}: {name} for {len(units)} units"),
        steps=p.steps,
        size=int(loaded.preprocess.input_size),
    )
    best = best_example_scores(session, layer, units)
    for r in results:
        ratio = r.act_max / best[r.unit] if best.get(r.unit, 0) > 0 else None
        for k, img in enumerate(r.images):
            variant = name if len(r.images) == 1 else f"{name}-{k}"
            publish(
                session,
                store,
                model=model,
                layer=layer,
                unit=r.unit,
                kind="featvis",
                variant=variant,
                params={**r.params, "seed": r.seed},
                data=webp_bytes(img, quality=90),
                ext="webp",
                content_type="image/webp",
                meta={
                    "act_max": r.acts_max[k],
                    "act_mean": r.acts_mean[k],
                    "best_example": best.get(r.unit),
                    "ratio_to_best_example": ratio,
                },
            )
    if objective in ("channel_top16", "channel") and probe is None:
        session.flush()
        refresh_cards(session, store, model, layer, [r.unit for r in results])
    return f"{len(results)} units of {layer.name} ({name})"


def bulk(session: Session, job: Job, progress: Progress) -> str:
    """Once the model is registered, queue one render job per block of default units; on a
    CPU, only once the jobs in ``after`` (the text views queued with it) have finished."""
    p = params_of(job, FeatvisBulkParams)
    model = ready_model(session, p.model_id)
    after = p.after
    if after and device() == "cpu":
        pending = session.scalars(
            select(Job.kind).where(Job.id.in_(after), Job.state.not_in(FINISHED_STATES))
        ).all()
        if pending:
            raise Waiting(f"renders wait on a CPU for the quicker views: {', '.join(pending)}")
    jobs = queue_featvis_blocks(session, model, p.units_per_layer)
    return f"queued {len(jobs)} render jobs"


featvis_bulk = job_task(TASK_FEATVIS_BULK, bulk)


featvis = job_task(TASK_FEATVIS, render)
