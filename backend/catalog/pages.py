"""HTML pages: models -> layers -> unit grid -> unit."""

from __future__ import annotations

import math
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session

from backend.analyses.service import condprob_view, typographic_summary, typographic_unit
from backend.catalog import service
from backend.catalog.facets import list_facets
from backend.catalog.repository import CatalogRepository
from backend.catalog.schemas import LayerOut
from backend.catalog.views import (
    VIEW_TITLES,
    examples_view,
    group_views,
    text_view,
    weights_view,
)
from backend.datasets.service import list_datasets
from backend.db.models import Model
from backend.deps import SessionDep, is_admin
from backend.families.service import list_families, unit_families
from backend.jobs.repository import JobRepository
from backend.jobs.schemas import job_out
from backend.templating import is_htmx, templates
from contracts.jobs import JobState

router = APIRouter(include_in_schema=False)

GRID_PAGE = 96


@router.get("/", response_class=HTMLResponse)
def home(request: Request, session: SessionDep) -> HTMLResponse:
    models = service.list_models(session)
    running = JobRepository(session).count(state=JobState.RUNNING) + JobRepository(session).count(
        state=JobState.QUEUED
    )
    return templates.TemplateResponse(
        request, "home.html", {"models": models, "jobs_in_flight": running}
    )


@router.get("/models/{model}", response_class=HTMLResponse)
def model_page(
    request: Request,
    model: str,
    session: SessionDep,
    all: bool = Query(False),
    job_id: int | None = Query(None, alias="job", description="a job to follow live"),
) -> HTMLResponse:
    m = service.get_model(session, model)
    return templates.TemplateResponse(
        request, "model.html", model_context(request, session, m, all, job_id)
    )


def model_context(
    request: Request,
    session: Session,
    m: Model,
    all: bool = False,
    job_id: int | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """What model.html shows (also re-rendered with an error by the admin's facet form)."""
    repo = CatalogRepository(session)
    rows = repo.list_layers(m.id, only_default=not all)
    layers = [service.layer_out(m, x) for x in rows]
    totals = repo.unit_totals([m.id]).get(m.id, (0, 0))
    previews = {
        x.name: [
            u
            for u in service.list_units(session, m, x, offset=0, limit=PREVIEW_UNITS)
            if u["thumbnail"]
        ]
        for x in rows
    }
    admin = is_admin(request)
    found = JobRepository(session).get(job_id) if job_id is not None else None
    return {
        "model": service.model_out(m, totals),
        "layers": layers,
        "show_all": all,
        "diagram": layer_diagram(layers),
        "previews": previews,
        "admin": admin,
        # The facet panel: trained facets for everyone, the training form for an admin.
        "facets": list_facets(session, m),
        "datasets": list(list_datasets(session)) if admin else [],
        "default_layers": [x.name for x in rows if x.is_default] if admin else [],
        "job": job_out(found) if found is not None else None,
        "typographic": typographic_summary(session, request.app.state.store, m),
        "error": None,
        "form": {},
        **extra,
    }


PREVIEW_UNITS = 8


def _spatial(layer: LayerOut) -> int:
    """The side of a layer's output grid: positions per unit (any layout), square-rooted."""
    positions = math.prod(layer.output_shape) // max(layer.unit_count, 1)
    return max(1, math.isqrt(max(positions, 1)))


def layer_diagram(layers: list[LayerOut]) -> dict[str, Any]:
    """Boxes for an SVG of the layer sequence: height grows with the spatial side, width
    with the unit count (both on log scales), left to right in forward order."""
    if not layers:
        return {"boxes": [], "width": 0, "height": 0}
    sides = [_spatial(x) for x in layers]
    top_side = max(sides)
    boxes, x, gap, tall = [], 56.0, 28.0, 120.0  # room on the left for the first label
    for layer, side in zip(layers, sides, strict=True):
        h = 12 + tall * math.log2(side + 1) / math.log2(top_side + 1)
        w = 10 + 6 * math.log2(max(layer.unit_count, 1))
        boxes.append(
            {
                "layer": layer,
                "x": round(x, 1),
                "y": round(8 + (tall + 12 - h) / 2, 1),
                "w": round(w, 1),
                "h": round(h, 1),
                "cx": round(x + w / 2, 1),
                "short": ".".join(layer.name.split(".")[-2:]),  # full name in the tooltip
                "side": side,
            }
        )
        x += w + gap
    # Labels hang below the tallest box, rotated so long names fit between narrow boxes.
    return {
        "boxes": boxes,
        "width": round(x - gap + 8, 1),
        "height": 8 + tall + 12 + 60,
        "mid": 8 + (tall + 12) / 2,
        "label_y": 8 + tall + 12 + 14,
    }


@router.get("/models/{model}/{layer:path}/{unit:int}", response_class=HTMLResponse)
def unit_page(
    request: Request,
    model: str,
    layer: str,
    unit: int,
    session: SessionDep,
    view: str | None = Query(None, description="which tab opens"),
    job_id: int | None = Query(None, alias="job", description="a job to follow live"),
) -> HTMLResponse:
    ctx = unit_context(request, session, model, layer, unit, view=view, job_id=job_id)
    return templates.TemplateResponse(request, "unit.html", ctx)


NO_WEIGHT_VIEWS = ("linear", "head", "mlp")  # layer kinds with no convolution kernels
TEXT_FAMILIES = ("clip_resnet", "clip_vit")  # models with a text tower (classifiers: classes)


def unit_context(
    request: Request,
    session: Session,
    model: str,
    layer: str,
    unit: int,
    *,
    view: str | None = None,
    job_id: int | None = None,
) -> dict[str, Any]:
    """What unit.html shows (also re-rendered by the admin's label and family edits)."""
    v = service.unit_view(session, model, layer, unit)
    card = next(iter(v.by_kind.pop("neuron_card", [])), None)
    public = request.app.state.settings.public_url.rstrip("/")
    views = group_views(v.by_kind)
    computable = ("featvis", "examples") + (
        ("weights",) if v.layer.kind not in NO_WEIGHT_VIEWS else ()
    )
    if v.model.class_names or v.model.family in TEXT_FAMILIES:  # it has a text head
        computable += ("condprob",)
    missing = [x for x in computable if x not in views]
    for x in missing:  # a tab for each missing view, with a way to compute it
        views[x] = {}
    active = view if view in views else next((x for x in views if views[x]), "featvis")
    job = None
    if job_id is not None:
        found = JobRepository(session).get(job_id)
        job = job_out(found) if found is not None else None
    examples = text = weights = None
    if active == "weights":
        weights = weights_view(request.app.state.store, views["weights"], unit, v.out.url)
    if active == "examples":
        examples = examples_view(session, request.app.state.store, views["examples"])
    if active == "text":
        text = text_view(request.app.state.store, views["text"])
    store = request.app.state.store
    plot = request.query_params.get("plot")
    condprob = condprob_view(store, views["condprob"], plot) if active == "condprob" else None
    attack = typographic_unit(store, views["text"], unit) if active == "text" else None
    admin = is_admin(request)
    return {
        "model": service.model_out(v.model),
        "layer": service.layer_out(v.model, v.layer),
        "unit": v.out,
        "views": views,
        "titles": VIEW_TITLES,
        "active": active,
        "examples": examples,
        "text": text,
        "weights": weights,
        "condprob": condprob,
        "attack": attack,
        "heatmap": request.query_params.get("heatmap") == "1",
        "families": unit_families(session, v.unit),
        "all_families": list_families(session) if admin else [],
        "missing": missing,
        "job": job,
        "admin": admin,
        # Trained facets the admin's render form offers (the query only runs for an admin).
        "facets": [f.name for f in list_facets(session, v.model)] if admin else [],
        "card_url": f"{public}{card.url}" if card else None,
        "page_url": f"{public}{v.out.url}",
    }


@router.get("/models/{model}/{layer:path}", response_class=HTMLResponse)
def layer_page(
    request: Request,
    model: str,
    layer: str,
    session: SessionDep,
    offset: int = Query(0, ge=0),
    view: str = Query("auto", pattern="^(auto|featvis|examples|weights|label)$"),
) -> HTMLResponse:
    m = service.get_model(session, model)
    lyr = service.get_layer(session, m, layer)
    units = service.list_units(session, m, lyr, offset=offset, limit=GRID_PAGE, view=view)
    ctx = {
        "model": service.model_out(m),
        "layer": service.layer_out(m, lyr),
        "units": units,
        "offset": offset,
        "page_size": GRID_PAGE,
        "next_offset": offset + GRID_PAGE if offset + GRID_PAGE < lyr.unit_count else None,
        "prev_offset": max(0, offset - GRID_PAGE) if offset > 0 else None,
        "view": view,
    }
    name = "_unit_grid.html" if is_htmx(request) else "layer.html"
    return templates.TemplateResponse(request, name, ctx)
