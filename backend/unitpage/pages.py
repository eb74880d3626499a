"""The unit page: the catalog's views of one unit, composed with the families it belongs to.

It sits above both domains so that their imports run one way: families are built from the
catalog's units, and the catalog knows nothing of families.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session

from backend.analyses.service import condprob_view, typographic_unit
from backend.catalog import service
from backend.catalog.facets import list_facets
from backend.catalog.structure import circuits_view
from backend.catalog.views import (
    VIEW_TITLES,
    examples_view,
    group_views,
    text_view,
    weights_view,
)
from backend.deps import in_session, is_admin
from backend.families.service import list_families, unit_families
from backend.jobs.repository import JobRepository
from backend.jobs.schemas import job_out
from backend.limits import FollowedJob
from backend.templating import templates

# Mounted before the catalog's pages: their layer page's {layer:path} would match this path.
router = APIRouter(include_in_schema=False)


@router.get("/models/{model}/{layer:path}/{unit:int}", response_class=HTMLResponse)
async def unit_page(
    request: Request,
    model: str,
    layer: str,
    unit: int,
    view: str | None = Query(None, description="which tab opens"),
    job_id: FollowedJob = None,
) -> HTMLResponse:
    """A unit's permalink: its views as tabs, its label and families, a job followed live."""

    def page(session: Session) -> HTMLResponse:  # rendered in the thread, beside the queries
        ctx = unit_context(request, session, model, layer, unit, view=view, job_id=job_id)
        return templates.TemplateResponse(request, "unit.html", ctx)

    return await in_session(request, page)


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
    circuits = None
    if active == "weights":
        weights = weights_view(request.app.state.store, views["weights"], unit, v.out.url)
        circuits = circuits_view(session, request.app.state.store, v.model, v.layer, unit)
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
        "circuits": circuits,
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
