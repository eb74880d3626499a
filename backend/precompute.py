"""Queue precompute jobs: everything for a (model, dataset) pair, or one view on request."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.analyses.service import request_condprob, request_typographic
from backend.catalog.facets import check_facet_below, facet_layer, facet_name, get_facet
from backend.config import get_settings
from backend.db.models import Dataset, Job, Layer, Model
from backend.errors import InvalidInput
from backend.jobs.service import enqueue_job
from contracts.jobs import (
    DEFAULT_CLIMB_UNITS,
    DEFAULT_OBJECTIVE,
    DEFAULT_WORDS,
    FEATVIS_OBJECTIVES,
    FeatvisBulkParams,
    FeatvisParams,
    MineExamplesParams,
    RenderedWordsParams,
    TextViewsParams,
    TrainFacetParams,
    WeightViewsParams,
)

FEATVIS_BLOCK = 32  # units per featvis job: one full batch on a GPU


def queue_precompute(
    session: Session,
    model: Model,
    dataset: Dataset,
    *,
    featvis_units: int | None = None,
    words: int = DEFAULT_WORDS,
    climb_units: int | None = DEFAULT_CLIMB_UNITS,
) -> list[Job]:
    """Every precompute job: dataset examples, text views, rendered words, feature vis,
    weight views, conditional probability plots and a typographic attack.

    ``featvis_units``: how many units per default layer get a bulk render (None = all,
    0 = none); ``words``: how many dictionary words are rendered and mined (0 = none);
    ``climb_units``: for CLIP, how many units per default layer get hill-climbed token
    strings (None = all, 0 = none).
    Tasks wait (retry) until what they need exists: the model registered, the dataset
    imported, the dataset examples mined; the bulk render job then queues one job per block
    of units.
    """
    jobs = [
        enqueue_job(
            session,
            MineExamplesParams(model_id=model.id, dataset_id=dataset.id),
            queue="gpu",
            priority=5,
            model_id=model.id,
            dataset_id=dataset.id,
        )
    ]
    jobs.append(request_text_views(session, model, dataset, climb_units=climb_units))
    if words:
        jobs.append(
            enqueue_job(
                session,
                RenderedWordsParams(model_id=model.id, dataset_id=dataset.id, words=words),
                queue="gpu",
                priority=2,
                model_id=model.id,
                total=words,
            )
        )
    if featvis_units != 0:
        # On a CPU the renders (minutes a block) go after the quicker views, so search,
        # labels and families come first; the bulk job waits for these jobs there.
        after = [j.id for j in jobs if j.kind in ("text_views", "rendered_words")]
        jobs.append(
            enqueue_job(
                session,
                FeatvisBulkParams(model_id=model.id, units_per_layer=featvis_units, after=after),
                queue="cpu",
                priority=4,
                model_id=model.id,
            )
        )
    jobs.append(request_weight_views(session, model, priority=4))
    # Conditional probability plots and the typographic attack: quick next to the renders.
    jobs.append(request_condprob(session, model, dataset, priority=3))
    jobs.append(request_typographic(session, model, dataset, priority=2))
    return jobs


def request_weight_views(
    session: Session, model: Model, layers: list[str] | None = None, *, priority: int = 6
) -> Job:
    """Weight views (NMF-RGB per unit, SVD placement per layer) for chosen layers (None: the
    default layers and the stem). Needs no images; waits for the model to register."""
    if layers is not None:
        _check_layers(session, model, layers)
    return enqueue_job(
        session,
        WeightViewsParams(
            model_id=model.id, layers=sorted(layers) if layers is not None else "default"
        ),
        queue="cpu",
        priority=priority,
        model_id=model.id,
    )


def _check_layers(session: Session, model: Model, layers: list[str]) -> None:
    """Refuse an empty list or unknown layer names before any work."""
    if not layers:
        raise InvalidInput("give at least one layer, or leave layers out for the defaults")
    known = set(session.scalars(select(Layer.name).where(Layer.model_id == model.id)))
    unknown = sorted(set(layers) - known)
    if unknown:
        raise InvalidInput(
            f"model {model.slug!r} has no layers {unknown}; "
            f"see /api/v1/models/{model.slug}/layers?all=true"
        )


def queue_featvis_blocks(session: Session, model: Model, units_per_layer: int | None) -> list[Job]:
    """Channel renders for the default layers' units, in blocks of FEATVIS_BLOCK units."""
    layers = session.scalars(
        select(Layer)
        .where(Layer.model_id == model.id, Layer.is_default.is_(True))
        .order_by(Layer.order)
    ).all()
    jobs = []
    for layer in layers:
        n = layer.unit_count if units_per_layer is None else min(units_per_layer, layer.unit_count)
        for start in range(0, n, FEATVIS_BLOCK):
            stop = min(start + FEATVIS_BLOCK, n)
            jobs.append(
                enqueue_job(
                    session,
                    FeatvisParams(
                        model_id=model.id,
                        layer_id=layer.id,
                        units=(start, stop),
                        objective=DEFAULT_OBJECTIVE,
                        steps=get_settings().featvis_steps,
                    ),
                    queue="gpu",
                    priority=3,
                    model_id=model.id,
                    total=stop - start,
                )
            )
    return jobs


def request_featvis(
    session: Session,
    model: Model,
    layer: Layer,
    unit: int,
    objective: str = DEFAULT_OBJECTIVE,
    facet: str | None = None,
) -> Job:
    """One unit's render, asked for from its page: sent on the interactive queue.

    ``facet``: the name of a trained facet whose probe steers the render (published as the
    ``facet-<name>`` variant); the probe's hash is in the job's params, so a retrained facet
    renders again.
    """
    if objective not in FEATVIS_OBJECTIVES:
        raise InvalidInput(f"objective must be one of {', '.join(FEATVIS_OBJECTIVES)}")
    params = FeatvisParams(
        model_id=model.id,
        layer_id=layer.id,
        units=(unit, unit + 1),
        objective=objective,  # type: ignore[arg-type]  # checked above
        steps=get_settings().featvis_steps,
    )
    if facet:
        probe = get_facet(session, model, facet)
        check_facet_below(session, model, probe, layer)
        params = params.model_copy(
            update={"facet": probe.variant, "facet_probe": probe.params_hash}
        )
    return enqueue_job(
        session,
        params,
        queue="interactive",
        priority=9,
        model_id=model.id,
        total=1,
    )


def request_facet(
    session: Session,
    model: Model,
    name: str,
    facet: Dataset,
    generic: Dataset,
    layer_name: str | None = None,
) -> Job:
    """Train a facet's probe (``facet`` images against ``generic`` ones) on a lower layer.

    ``layer_name``: the layer the probe reads (default: the middle default layer).
    """
    if facet.id == generic.id:
        raise InvalidInput("the facet and generic datasets must differ")
    for ds in (facet, generic):
        if ds.state == "failed":
            raise InvalidInput(f"dataset {ds.slug} failed to import: {ds.error}")
    layer = facet_layer(session, model, layer_name)
    return enqueue_job(
        session,
        TrainFacetParams(
            model_id=model.id,
            name=facet_name(name),
            dataset_id=facet.id,
            generic_id=generic.id,
            layer_id=layer.id,
            dataset_checksums=[facet.checksum, generic.checksum],
        ),
        queue="gpu",
        priority=8,
        model_id=model.id,
        dataset_id=facet.id,
        total=3,
    )


def request_examples(
    session: Session, model: Model, dataset: Dataset, layers: list[str] | None = None
) -> Job:
    """Dataset examples for chosen layers (None: the defaults), checked before any work."""
    _check_importable(dataset)
    if layers is not None:
        _check_layers(session, model, layers)
    return enqueue_job(
        session,
        MineExamplesParams(
            model_id=model.id,
            dataset_id=dataset.id,
            layers=sorted(layers) if layers is not None else "default",
        ),
        queue="gpu",
        priority=6,
        model_id=model.id,
        dataset_id=dataset.id,
    )


def request_text_views(
    session: Session,
    model: Model,
    dataset: Dataset,
    *,
    climb_units: int | None = DEFAULT_CLIMB_UNITS,
    priority: int = 4,
) -> Job:
    """Text views of the default layers (zero-shot search index, text feature visualizations,
    labels, families) from the dataset's examples; the job waits until they are mined."""
    _check_importable(dataset)
    return enqueue_job(
        session,
        TextViewsParams(model_id=model.id, dataset_id=dataset.id, climb_units=climb_units),
        queue="gpu",
        priority=priority,
        model_id=model.id,
        dataset_id=dataset.id,
    )


def _check_importable(dataset: Dataset) -> None:
    """Refuse a dataset that can never give images (a queued import may still)."""
    if dataset.state == "ready" and dataset.image_count == 0:
        raise InvalidInput(f"dataset {dataset.slug!r} has no readable images")
    if dataset.state == "failed":
        raise InvalidInput(f"dataset {dataset.slug!r} failed to import: {dataset.error}")
