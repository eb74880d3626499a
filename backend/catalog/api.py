"""JSON API for models, layers and units, and the jobs that compute their views."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request, status

from backend import urls
from backend.catalog import service
from backend.catalog.facets import list_facets
from backend.catalog.repository import CatalogRepository
from backend.catalog.schemas import (
    ExamplesRequest,
    FacetCreate,
    FacetOut,
    LayerOut,
    ModelCreate,
    ModelCreated,
    ModelOut,
    TextRequest,
    UnitOut,
    WeightsRequest,
)
from backend.datasets.service import get_dataset
from backend.deps import AdminDep, SessionDep, in_session
from backend.jobs.schemas import JobOut, job_out
from backend.limits import Offset
from backend.precompute import (
    request_examples,
    request_facet,
    request_featvis,
    request_text_views,
    request_weight_views,
)
from backend.schemas import Page
from contracts.jobs import DEFAULT_OBJECTIVE, FEATVIS_OBJECTIVES

router = APIRouter(prefix=urls.API, tags=["models"])


@router.get("/models", response_model=list[ModelOut])
def list_models(session: SessionDep) -> list[ModelOut]:
    """All registered models with their layer and unit counts."""
    return service.list_models(session)


@router.post(
    "/models",
    response_model=ModelCreated,
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[AdminDep],
)
def add_model(body: ModelCreate, session: SessionDep) -> ModelCreated:
    """Register a model from a spec; the registration runs as a job, and its weight views
    (they need no images) are queued to follow it."""
    model, job = service.add_model(session, body.spec, body.slug)
    request_weight_views(session, model)
    session.flush()
    return ModelCreated(model=service.model_out(model), job=job_out(job))


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
async def get_unit(model: str, layer: str, unit: int, request: Request) -> UnitOut:
    """One unit with every artifact computed for it (kind and URL)."""
    return await in_session(request, lambda s: service.unit_view(s, model, layer, unit).out)


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


@router.post(
    "/models/{model}/layers/{layer:path}/units/{unit:int}/featvis",
    response_model=JobOut,
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[AdminDep],
)
def render_unit(
    model: str,
    layer: str,
    unit: int,
    session: SessionDep,
    objective: str = Query(DEFAULT_OBJECTIVE, description=", ".join(FEATVIS_OBJECTIVES)),
    facet: str | None = Query(None, description="a trained facet's name: steer the render"),
) -> JobOut:
    """Render a unit's feature visualization now (ahead of bulk work); returns the job."""
    m, lyr, _ = service.resolve_unit(session, model, layer, unit)
    return job_out(request_featvis(session, m, lyr, unit, objective, facet))


@router.post(
    "/models/{model}/examples",
    response_model=JobOut,
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[AdminDep],
)
def mine_examples(model: str, body: ExamplesRequest, session: SessionDep) -> JobOut:
    """Mine dataset examples for chosen layers (default layers if none), as a job (admin).

    Unknown layers and empty datasets are refused before any work starts."""
    m = service.get_model(session, model)
    ds = get_dataset(session, body.dataset)
    return job_out(request_examples(session, m, ds, body.layers))


@router.post(
    "/models/{model}/text",
    response_model=JobOut,
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[AdminDep],
)
def text_views(model: str, body: TextRequest, session: SessionDep) -> JobOut:
    """Build the text views of the default layers from a dataset's examples: the zero-shot
    search index, text feature visualizations, labels with their fidelity, families (admin).
    The job waits for the dataset examples; request them first."""
    m = service.get_model(session, model)
    ds = get_dataset(session, body.dataset)
    return job_out(request_text_views(session, m, ds, climb_units=body.climb_units))


@router.post(
    "/models/{model}/weights",
    response_model=JobOut,
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[AdminDep],
)
def weight_views(model: str, session: SessionDep, body: WeightsRequest | None = None) -> JobOut:
    """Compute weight views (NMF-RGB per unit, SVD placement per layer) for chosen layers
    (default: the default layers and the stem), as a job (admin). No images are needed."""
    m = service.get_model(session, model)
    layers = body.layers if body is not None else None
    return job_out(request_weight_views(session, m, layers))


@router.post(
    "/models/{model}/facets",
    response_model=JobOut,
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[AdminDep],
)
def train_facet(model: str, body: FacetCreate, session: SessionDep) -> JobOut:
    """Train a facet: a linear probe telling a dataset's images from generic ones on a lower
    layer (default: the middle default layer), stored and reused by renders (admin)."""
    m = service.get_model(session, model)
    facet, generic = get_dataset(session, body.dataset), get_dataset(session, body.generic)
    return job_out(request_facet(session, m, body.name, facet, generic, body.layer))


@router.get("/models/{model}/facets", response_model=list[FacetOut])
def get_facets(model: str, session: SessionDep) -> list[FacetOut]:
    """The model's trained facets: name, probe layer, training accuracy, probe file."""
    return list_facets(session, service.get_model(session, model))
