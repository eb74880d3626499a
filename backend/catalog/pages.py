"""HTML pages: models -> layers -> unit grid (the unit page, which also shows the unit's
families, is composed in backend/unitpage/)."""

from __future__ import annotations

import math
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session

from backend.analyses.service import typographic_summary
from backend.catalog import service
from backend.catalog.branches import branch_bands, branch_shares, group_units
from backend.catalog.facets import list_facets
from backend.catalog.repository import CatalogRepository
from backend.catalog.schemas import LayerOut
from backend.catalog.structure_views import structure_context
from backend.datasets.service import list_datasets
from backend.db.models import Model
from backend.deps import SessionDep, is_admin
from backend.jobs.repository import JobRepository
from backend.jobs.schemas import job_out
from backend.limits import FollowedJob, Offset
from backend.templating import is_htmx, templates
from contracts.jobs import IN_FLIGHT_STATES

router = APIRouter(include_in_schema=False)

GRID_PAGE = 96


@router.get("/", response_class=HTMLResponse)
def home(request: Request, session: SessionDep) -> HTMLResponse:
    models = service.list_models(session)
    repo = JobRepository(session)
    in_flight = sum(repo.count(state=state) for state in IN_FLIGHT_STATES)
    return templates.TemplateResponse(
        request, "home.html", {"models": models, "jobs_in_flight": in_flight}
    )


@router.get("/models/{model}", response_class=HTMLResponse)
def model_page(
    request: Request,
    model: str,
    session: SessionDep,
    all: bool = Query(False),
    job_id: FollowedJob = None,
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
        y = 8 + (tall + 12 - h) / 2
        boxes.append(
            {
                "layer": layer,
                "x": round(x, 1),
                "y": round(y, 1),
                "bands": branch_bands(layer.branches, layer.unit_count, y, h),
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


@router.get("/models/{model}/{layer:path}", response_class=HTMLResponse)
def layer_page(
    request: Request,
    model: str,
    layer: str,
    session: SessionDep,
    offset: Offset = 0,
    view: str = Query("auto", pattern="^(auto|featvis|examples|weights|label)$"),
) -> HTMLResponse:
    m = service.get_model(session, model)
    lyr = service.get_layer(session, m, layer)
    units = service.list_units(session, m, lyr, offset=offset, limit=GRID_PAGE, view=view)
    out = service.layer_out(m, lyr)
    ctx = {
        "model": service.model_out(m),
        "layer": out,
        "units": units,
        "groups": group_units(units, out.branches),
        "shares": branch_shares(out.branches, out.unit_count),
        "offset": offset,
        "page_size": GRID_PAGE,
        "next_offset": offset + GRID_PAGE if offset + GRID_PAGE < lyr.unit_count else None,
        "prev_offset": max(0, offset - GRID_PAGE) if offset > 0 else None,
        "view": view,
    }
    name = "_unit_grid.html" if is_htmx(request) else "layer.html"
    ctx.update(structure_context(request, session, m, lyr, view))
    return templates.TemplateResponse(request, name, ctx)
