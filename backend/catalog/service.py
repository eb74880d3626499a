"""Catalog logic: registering models, reading models, layers and units, labelling units."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from backend import urls
from backend.catalog.labels import label_guesses, label_score, label_threshold, shown_labels
from backend.catalog.repository import THUMBNAILS, ArtifactRow, CatalogRepository
from backend.catalog.schemas import ArtifactOut, LayerOut, ModelOut, UnitOut
from backend.db.models import Job, Layer, Model, Unit
from backend.errors import InvalidInput, NotFoundError
from backend.jobs.service import enqueue_job
from backend.redact import scrub
from contracts.jobs import RegisterModelParams
from contracts.layout import branch_of, branches_from_json
from contracts.spec import SpecError, parse_spec, slugify


def add_model(session: Session, spec: str, slug: str | None = None) -> tuple[Model, Job]:
    """Record a model and queue its registration (load, enumerate layers and units)."""
    try:
        parsed = parse_spec(spec)
    except SpecError as e:
        raise InvalidInput(str(e)) from e
    slug = slugify(slug) if slug else parsed.default_slug()
    repo = CatalogRepository(session)
    model = repo.get_model(slug)
    if model is None:
        model = Model(
            slug=slug,
            spec=str(parsed),
            source=parsed.source,
            name=parsed.name,
            weights=parsed.weights,
            pretrained=parsed.weights is not None,
            state="pending",
        )
        repo.add(model)
    elif model.spec != str(parsed):
        raise InvalidInput(f"slug {slug!r} is already taken by {model.spec}")
    job = enqueue_job(
        session,
        RegisterModelParams(model_id=model.id, spec=model.spec),
        queue="gpu",
        priority=9,
        model_id=model.id,
    )
    return model, job


def get_model(session: Session, slug: str) -> Model:
    model = CatalogRepository(session).get_model(slug)
    if model is None:
        raise NotFoundError("model", slug)
    return model


def get_layer(session: Session, model: Model, name: str) -> Layer:
    layer = CatalogRepository(session).get_layer(model.id, name)
    if layer is None:
        raise NotFoundError("layer", name)
    return layer


def get_unit(session: Session, layer: Layer, index: int) -> Unit:
    unit = CatalogRepository(session).get_unit(layer.id, index)
    if unit is None:
        raise NotFoundError("unit", index)
    return unit


def model_out(model: Model, totals: tuple[int, int] = (0, 0)) -> ModelOut:
    return ModelOut(
        slug=model.slug,
        spec=model.spec,
        source=model.source,
        name=model.name,
        weights=model.weights,
        pretrained=model.pretrained,
        weights_checksum=model.weights_checksum,
        family=model.family,
        input_size=model.input_size,
        preprocessing=model.preprocessing,
        state=model.state,
        error=scrub(model.error),
        layer_count=totals[0],
        unit_count=totals[1],
        url=urls.model_url(model.slug),
        api_url=urls.api_model_url(model.slug),
    )


def list_models(session: Session) -> list[ModelOut]:
    repo = CatalogRepository(session)
    models = repo.list_models()
    totals = repo.unit_totals([m.id for m in models])
    outs = []
    for m in models:
        out = model_out(m, totals.get(m.id, (0, 0)))
        out.preview = [urls.object_url(k) for k in repo.preview_keys(m.id)]
        outs.append(out)
    return outs


def layer_out(model: Model, layer: Layer) -> LayerOut:
    return LayerOut(
        name=layer.name,
        module_path=layer.module_path,
        kind=layer.kind,
        unit_count=layer.unit_count,
        output_shape=layer.output_shape,
        order=layer.order,
        is_default=layer.is_default,
        branches=branches_from_json(layer.branches),
        url=urls.layer_url(model.slug, layer.name),
        api_url=urls.api_layer_url(model.slug, layer.name),
    )


def artifact_out(a: ArtifactRow) -> ArtifactOut:
    return ArtifactOut(
        kind=a.kind,
        variant=a.variant,
        url=urls.object_url(a.storage_key),
        storage_key=a.storage_key,
        content_type=a.content_type,
        meta=a.meta,
        provenance=a.provenance,
        created_at=a.created_at,
    )


def unit_out(
    model: Model, layer: Layer, unit: Unit, artifacts: Sequence[ArtifactRow] | None = None
) -> UnitOut:
    i = unit.index
    return UnitOut(
        model=model.slug,
        layer=layer.name,
        index=i,
        label=unit.label,
        label_source=unit.label_source,
        label_confidence=unit.label_confidence,
        branch=branch_of(branches_from_json(layer.branches), i),
        labels=shown_labels(unit),
        label_guesses=label_guesses(unit),
        label_threshold=label_threshold(unit),
        url=urls.unit_url(model.slug, layer.name, i),
        api_url=urls.api_unit_url(model.slug, layer.name, i),
        prev_url=urls.unit_url(model.slug, layer.name, i - 1) if i > 0 else None,
        next_url=urls.unit_url(model.slug, layer.name, i + 1) if i + 1 < layer.unit_count else None,
        artifacts=[artifact_out(a) for a in artifacts or []],
    )


@dataclass
class UnitView:
    """Everything the unit page and unit JSON show."""

    model: Model
    layer: Layer
    unit: Unit
    out: UnitOut
    by_kind: dict[str, list[ArtifactOut]]


# Layer-wide artifacts listed with each of the layer's units: the weight views' shared NMF
# factors (what each colour reads) and SVD placement (every unit's coordinates), and the
# typographic attack's responses of every unit.
LAYER_KINDS_PER_UNIT = ("weights_nmf", "weights_svd", "typographic")


def resolve_unit(
    session: Session, model_slug: str, layer_name: str, index: int
) -> tuple[Model, Layer, Unit]:
    """A unit by its permalink's parts; NotFoundError naming the first part that is unknown."""
    model = get_model(session, model_slug)
    layer = get_layer(session, model, layer_name)
    return model, layer, get_unit(session, layer, index)


def set_label(
    session: Session, model_slug: str, layer_name: str, index: int, label: str | None
) -> Unit:
    """Set a unit's label by hand (an empty one clears it); it becomes searchable."""
    _, _, unit = resolve_unit(session, model_slug, layer_name, index)
    unit.label = label.strip() if label and label.strip() else None
    unit.label_source = "admin" if unit.label else None
    unit.label_confidence = 1.0 if unit.label else None
    # The scores were the earlier labels': this one is scored at the next labels run.
    unit.label_scores = {**(unit.label_scores or {}), "labels": []}
    session.flush()
    return unit


def unit_view(session: Session, model_slug: str, layer_name: str, index: int) -> UnitView:
    repo = CatalogRepository(session)
    # The hot path: two queries. The step-by-step lookups only name what is unknown.
    found = repo.find_unit(model_slug, layer_name, index)
    model, layer, unit = found or resolve_unit(session, model_slug, layer_name, index)
    arts = repo.unit_and_layer_artifacts(layer.id, index, LAYER_KINDS_PER_UNIT)
    out = unit_out(model, layer, unit, arts)
    by_kind: dict[str, list[ArtifactOut]] = {}
    for a in out.artifacts:
        by_kind.setdefault(a.kind, []).append(a)
    return UnitView(model, layer, unit, out, by_kind)


GRID_VIEWS = {
    "auto": THUMBNAILS,
    "featvis": (("featvis", "channel_top16"), ("featvis", "channel")),
    "examples": (("example_crop", "thumb"),),
    "weights": (("weights_nmf", "rgb"),),
    "label": (),
}


def list_units(
    session: Session, model: Model, layer: Layer, *, offset: int, limit: int, view: str = "auto"
) -> list[dict[str, Any]]:
    """Units of one page of the grid, with a thumbnail URL where one exists."""
    repo = CatalogRepository(session)
    units = repo.list_units(layer.id, offset=offset, limit=limit)
    thumbs: dict[int, str] = {}
    # Grid thumbnails: by default the feature visualization where there is one, else the top
    # example; "label" shows labels only.
    for kind, variant in GRID_VIEWS.get(view, GRID_VIEWS["auto"]):
        keys = repo.layer_thumbnail_keys(layer.id, kind, variant, [u.index for u in units])
        for index, key in keys.items():
            thumbs.setdefault(index, urls.object_url(key))
    return [
        {
            "index": u.index,
            "label": u.label,
            "label_score": label_score(u),
            "url": urls.unit_url(model.slug, layer.name, u.index),
            "api_url": urls.api_unit_url(model.slug, layer.name, u.index),
            "thumbnail": thumbs.get(u.index),
        }
        for u in units
    ]
