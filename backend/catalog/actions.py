"""Browser actions: admin sign-in, rendering a missing view, and its live progress."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel

from backend import urls
from backend.catalog import service
from backend.catalog.facets import FacetCreate, FacetOut, list_facets
from backend.catalog.pages import model_context
from backend.datasets.service import get_dataset
from backend.deps import ADMIN_COOKIE, AdminDep, SessionDep, require_admin, token_matches
from backend.errors import InvalidInput, MicroscopeError, NotFoundError, Unauthorized
from backend.jobs.repository import JobRepository
from backend.jobs.schemas import job_out
from backend.precompute import (
    request_examples,
    request_facet,
    request_featvis,
    request_weight_views,
)
from backend.templating import templates
from contracts.jobs import DEFAULT_OBJECTIVE, FEATVIS_OBJECTIVES, JobState

router = APIRouter(include_in_schema=False)
api = APIRouter(prefix=urls.API, tags=["models"])


@router.get("/admin/login")
def admin_login(request: Request, token: str = Query(...), next: str = Query("/")) -> Response:
    if not token_matches(request, token):
        raise Unauthorized("wrong admin token")
    target = next if next.startswith("/") and not next.startswith("//") else "/"
    resp = RedirectResponse(target, status_code=303)
    resp.set_cookie(ADMIN_COOKIE, token, httponly=True, samesite="strict", max_age=30 * 24 * 3600)
    return resp


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


@router.get("/partials/job/{job_id}", response_class=HTMLResponse)
def job_fragment(request: Request, job_id: int, session: SessionDep) -> Response:
    """One job's progress; when it is done, htmx reloads the page to show the result."""
    job = JobRepository(session).get(job_id)
    if job is None:
        raise NotFoundError("job", job_id)
    out = job_out(job)
    resp = templates.TemplateResponse(request, "_job.html", {"job": out})
    if out.state in (JobState.SUCCEEDED, JobState.FAILED):
        resp.headers["HX-Refresh"] = "true"
    return resp


@api.post(
    "/models/{model}/layers/{layer:path}/units/{unit:int}/featvis",
    status_code=202,
    dependencies=[AdminDep],
)
def render_unit(
    model: str,
    layer: str,
    unit: int,
    session: SessionDep,
    objective: str = Query(DEFAULT_OBJECTIVE, description=", ".join(FEATVIS_OBJECTIVES)),
    facet: str | None = Query(None, description="a trained facet's name: steer the render"),
) -> dict:
    """Render a unit's feature visualization now (ahead of bulk work); returns the job."""
    m, lyr, _ = service.resolve_unit(session, model, layer, unit)
    return job_out(request_featvis(session, m, lyr, unit, objective, facet)).model_dump()


class ExamplesRequest(BaseModel):
    dataset: str
    layers: list[str] | None = None


@api.post("/models/{model}/examples", status_code=202, dependencies=[AdminDep])
def mine_examples(model: str, body: ExamplesRequest, session: SessionDep) -> dict:
    """Mine dataset examples for chosen layers (default layers if none), as a job (admin).

    Unknown layers and empty datasets are refused before any work starts."""
    m = service.get_model(session, model)
    ds = get_dataset(session, body.dataset)
    return job_out(request_examples(session, m, ds, body.layers)).model_dump()


class WeightsRequest(BaseModel):
    layers: list[str] | None = None


@api.post("/models/{model}/weights", status_code=202, dependencies=[AdminDep])
def weight_views(model: str, session: SessionDep, body: WeightsRequest | None = None) -> dict:
    """Compute weight views (NMF-RGB per unit, SVD placement per layer) for chosen layers
    (default: the default layers and the stem), as a job (admin). No images are needed."""
    m = service.get_model(session, model)
    layers = body.layers if body is not None else None
    return job_out(request_weight_views(session, m, layers)).model_dump()


@api.post("/models/{model}/facets", status_code=202, dependencies=[AdminDep])
def train_facet(model: str, body: FacetCreate, session: SessionDep) -> dict:
    """Train a facet: a linear probe telling a dataset's images from generic ones on a lower
    layer (default: the middle default layer), stored and reused by renders (admin)."""
    m = service.get_model(session, model)
    facet, generic = get_dataset(session, body.dataset), get_dataset(session, body.generic)
    return job_out(request_facet(session, m, body.name, facet, generic, body.layer)).model_dump()


@api.get("/models/{model}/facets")
def get_facets(model: str, session: SessionDep) -> list[FacetOut]:
    """The model's trained facets: name, probe layer, training accuracy, probe file."""
    return list_facets(session, service.get_model(session, model))
