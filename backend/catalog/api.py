"""JSON API for models, layers and units."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, status

from backend import urls
from backend.catalog import service
from backend.catalog.repository import CatalogRepository
from backend.catalog.schemas import LayerOut, ModelCreate, ModelOut, Page, UnitOut
from backend.deps import AdminDep, SessionDep
from backend.jobs.schemas import job_out
from backend.limits import Offset
from backend.precompute import request_weight_views

router = APIRouter(prefix=urls.API, tags=["models"])


@router.get("/models", response_model=list[ModelOut])
def list_models(session: SessionDep) -> list[ModelOut]:
    """All registered models with their layer and unit counts."""
    return service.list_models(session)


@router.post(
    "/models",
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[AdminDep],
)
def add_model(body: ModelCreate, session: SessionDep) -> dict[str, Any]:
    """Register a model from a spec; the registration runs as a job, and its weight views
    (they need no images) are queued to follow it."""
    model, job = service.add_model(session, body.spec, body.slug)
    request_weight_views(session, model)
    session.flush()
    return {"model": service.model_out(model).model_dump(), "job": job_out(job).model_dump()}


@router.get("/models/{model}", response_model=ModelOut)
def get_model(model: str, session: SessionDep) -> ModelOut:
    """One model."""
    m = service.get_model(session, model)
    totals = CatalogRepository(session).unit_totals([m.id]).get(m.id, (0, 0))
    return service.model_out(m, totals)


@router.get("/models/{model}/layers", response_model=list[LayerOut])
def list_layers(
    model: str,
    session: SessionDep,
    all: bool = Query(False, description="include non-default layers"),
) -> list[LayerOut]:
    """The model's layers in forward order (default layers unless ``all``)."""
    m = service.get_model(session, model)
    layers = CatalogRepository(session).list_layers(m.id, only_default=not all)
    return [service.layer_out(m, layer) for layer in layers]


@router.get("/models/{model}/layers/{layer:path}/units/{unit:int}", response_model=UnitOut)
def get_unit(model: str, layer: str, unit: int, session: SessionDep) -> UnitOut:
    """One unit with every artifact computed for it (kind and URL)."""
    return service.unit_view(session, model, layer, unit).out


@router.get("/models/{model}/layers/{layer:path}/units", response_model=Page[dict[str, Any]])
def list_units(
    model: str,
    layer: str,
    session: SessionDep,
    offset: Offset = 0,
    limit: int = Query(100, ge=1, le=1000),
) -> Page[dict[str, Any]]:
    """A page of the layer's units."""
    m = service.get_model(session, model)
    lyr = service.get_layer(session, m, layer)
    items = service.list_units(session, m, lyr, offset=offset, limit=limit)
    nxt = None
    if offset + limit < lyr.unit_count:
        nxt = f"{urls.api_layer_url(m.slug, lyr.name)}/units?offset={offset + limit}&limit={limit}"
    return Page(items=items, total=lyr.unit_count, offset=offset, limit=limit, next=nxt)


@router.get("/models/{model}/layers/{layer:path}", response_model=LayerOut)
def get_layer(model: str, layer: str, session: SessionDep) -> LayerOut:
    """One layer."""
    m = service.get_model(session, model)
    return service.layer_out(m, service.get_layer(session, m, layer))
