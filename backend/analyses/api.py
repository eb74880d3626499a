"""JSON API and page actions for conditional probability plots and typographic attacks."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response
from pydantic import BaseModel, Field

from backend import urls
from backend.analyses import service
from backend.catalog import service as catalog
from backend.deps import AdminDep, SessionDep, require_admin
from backend.errors import NotFoundError
from backend.jobs.schemas import job_out

router = APIRouter(prefix=urls.API, tags=["models"])
pages = APIRouter(include_in_schema=False)
MINED = "default: the dataset the model was mined on"


class CondProbRequest(BaseModel):
    concepts: list[str] | None = Field(
        default=None, description="categories (2-40) for the text head's zero-shot classes"
    )
    layers: list[str] | None = Field(default=None, description="default: the default layers")
    dataset: str | None = Field(default=None, description=MINED)


class TypographicRequest(BaseModel):
    words: list[str] | None = Field(default=None, description="class names to write")
    photos: int | None = Field(default=None, ge=1, le=2000, description="photos per word")
    dataset: str | None = Field(default=None, description=MINED)


@router.get("/models/{model}/layers/{layer:path}/units/{unit:int}/condprob")
def get_condprob(model: str, layer: str, unit: int, request: Request, session: SessionDep) -> Any:
    """A unit's conditional probability plot: uniform buckets of its activation range, the
    share of each concept among the images sampled in each, x in standard deviations."""
    return service.unit_condprob(session, request.app.state.store, model, layer, unit)


@router.post("/models/{model}/condprob", status_code=202, dependencies=[AdminDep])
def post_condprob(model: str, session: SessionDep, body: CondProbRequest | None = None) -> dict:
    """Compute conditional probability plots over a concept list, as a job (admin)."""
    m = catalog.get_model(session, model)
    b = body or CondProbRequest()
    ds = service.dataset_for(session, m, b.dataset)
    job = service.request_condprob(session, m, ds, concepts=b.concepts, layers=b.layers)
    return job_out(job).model_dump()


@router.get("/models/{model}/typographic")
def get_typographic(model: str, request: Request, session: SessionDep) -> Any:
    """The model's typographic attack: the share of photos whose top class became the word
    written on them, and per word that rate and the units that rise most."""
    m = catalog.get_model(session, model)
    found = service.typographic_summary(session, request.app.state.store, m)
    if found is None:
        raise NotFoundError("typographic attack", m.slug)
    return found


@router.post("/models/{model}/typographic", status_code=202, dependencies=[AdminDep])
def post_typographic(
    model: str, session: SessionDep, body: TypographicRequest | None = None
) -> dict:
    """Run a typographic attack: class names written on the dataset's photos, as a job (admin)."""
    m = catalog.get_model(session, model)
    b = body or TypographicRequest()
    ds = service.dataset_for(session, m, b.dataset)
    job = service.request_typographic(session, m, ds, words=b.words, photos=b.photos)
    return job_out(job).model_dump()


@pages.post(
    "/models/{model}/{layer:path}/{unit:int}/condprob", dependencies=[Depends(require_admin)]
)
def condprob_from_page(
    model: str, layer: str, unit: int, session: SessionDep, concepts: str = Form("")
) -> Response:
    """The unit page's concept list: plots for the unit's layer, followed live."""
    m, lyr, _ = catalog.resolve_unit(session, model, layer, unit)
    ds = service.dataset_for(session, m, None)
    job = service.request_condprob(
        session, m, ds, concepts=concepts or None, layers=[lyr.name], priority=8
    )
    url = f"{urls.unit_url(m.slug, lyr.name, unit)}?view=condprob&job={job.id}"
    return RedirectResponse(url, status_code=303)
