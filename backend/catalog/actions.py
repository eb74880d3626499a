"""Browser actions: queueing a missing view or a facet from a page (each answers with a
redirect to the page that follows the job live)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response

from backend import urls
from backend.catalog import service
from backend.catalog.pages import model_context
from backend.datasets.service import get_dataset
from backend.deps import SessionDep, require_admin
from backend.errors import InvalidInput, MicroscopeError
from backend.precompute import request_facet, request_featvis, request_weight_views
from backend.templating import templates
from contracts.jobs import DEFAULT_OBJECTIVE

router = APIRouter(include_in_schema=False)


@router.post(
    "/models/{model}/{layer:path}/{unit:int}/render", dependencies=[Depends(require_admin)]
)
def render_from_page(
    model: str,
    layer: str,
    unit: int,
    session: SessionDep,
    objective: str = Form(DEFAULT_OBJECTIVE),
    facet: str = Form(""),
) -> Response:
    """The unit page's render form: the unit's feature visualization, followed live."""
    m, lyr, _ = service.resolve_unit(session, model, layer, unit)
    job = request_featvis(session, m, lyr, unit, objective, facet or None)
    url = f"{urls.unit_url(m.slug, lyr.name, unit)}?view=featvis&job={job.id}"
    return RedirectResponse(url, status_code=303)


@router.post(
    "/models/{model}/{layer:path}/{unit:int}/weights", dependencies=[Depends(require_admin)]
)
def weights_from_page(model: str, layer: str, unit: int, session: SessionDep) -> Response:
    """The unit page's button: weight views for the unit's layer, followed live."""
    m, lyr, _ = service.resolve_unit(session, model, layer, unit)
    job = request_weight_views(session, m, [lyr.name])
    url = f"{urls.unit_url(m.slug, lyr.name, unit)}?view=weights&job={job.id}"
    return RedirectResponse(url, status_code=303)


@router.post("/models/{model}/facets", dependencies=[Depends(require_admin)])
def train_facet_from_page(
    request: Request,
    model: str,
    session: SessionDep,
    name: str = Form(""),
    dataset: str = Form(""),
    generic: str = Form(""),
    layer: str = Form(""),
) -> Response:
    """The model page's facet form: queue the probe's training and follow it live."""
    m = service.get_model(session, model)
    try:
        if not (dataset and generic):
            raise InvalidInput("pick a facet dataset and a generic one")
        job = request_facet(
            session,
            m,
            name,
            get_dataset(session, dataset),
            get_dataset(session, generic),
            layer or None,
        )
    except MicroscopeError as e:
        session.rollback()
        form = {"name": name, "dataset": dataset, "generic": generic, "layer": layer}
        ctx = model_context(request, session, m, error=str(e), form=form)
        return templates.TemplateResponse(request, "model.html", ctx, status_code=422)
    return RedirectResponse(f"{urls.model_url(m.slug)}?job={job.id}#facets", status_code=303)
