"""JSON API for families, labels and search."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request, status

from backend import urls
from backend.catalog import service as catalog
from backend.deps import AdminDep, SessionDep
from backend.families import search as search_service
from backend.families import service
from backend.families.schemas import (
    Card,
    CompositionOut,
    FamilyCreate,
    FamilyOut,
    FamilyUpdate,
    LabelOut,
    LabelUpdate,
    MemberRef,
)

router = APIRouter(prefix=urls.API, tags=["families"])


@router.get("/families", response_model=list[FamilyOut])
def list_families(session: SessionDep) -> list[FamilyOut]:
    """All families with their sizes."""
    return service.list_families(session)


@router.post(
    "/families",
    response_model=FamilyOut,
    status_code=status.HTTP_201_CREATED,
    dependencies=[AdminDep],
)
def create_family(body: FamilyCreate, session: SessionDep) -> FamilyOut:
    """Create a family, optionally with members (admin)."""
    fam = service.create_family(session, body)
    return service.family_out(session, fam, with_members=True)


@router.get("/families/{slug}", response_model=FamilyOut)
def get_family(slug: str, session: SessionDep) -> FamilyOut:
    """A family and its neuron cards."""
    return service.family_out(session, service.get_family(session, slug), with_members=True)


@router.patch("/families/{slug}", response_model=FamilyOut, dependencies=[AdminDep])
def update_family(slug: str, body: FamilyUpdate, session: SessionDep) -> FamilyOut:
    """Rename a family or change its description (admin); its slug and URL stay."""
    fam = service.update_family(session, service.get_family(session, slug), body)
    return service.family_out(session, fam, with_members=True)


@router.post("/families/{slug}/members", response_model=FamilyOut, dependencies=[AdminDep])
def add_member(slug: str, body: MemberRef, session: SessionDep) -> FamilyOut:
    """Add a unit to a family (admin)."""
    fam = service.get_family(session, slug)
    service.add_member(session, fam, body)
    return service.family_out(session, fam, with_members=True)


@router.delete("/families/{slug}/members", response_model=FamilyOut, dependencies=[AdminDep])
def remove_member(slug: str, body: MemberRef, session: SessionDep) -> FamilyOut:
    """Remove a unit from a family (admin)."""
    fam = service.get_family(session, slug)
    service.remove_member(session, fam, body)
    return service.family_out(session, fam, with_members=True)


@router.put(
    "/models/{model}/layers/{layer:path}/units/{unit:int}/label",
    response_model=LabelOut,
    dependencies=[AdminDep],
    tags=["models"],
)
def set_label(
    model: str, layer: str, unit: int, body: LabelUpdate, session: SessionDep
) -> LabelOut:
    """Set or clear a unit's label (admin); it becomes searchable."""
    u = catalog.set_label(session, model, layer, unit, body.label)
    return LabelOut(label=u.label, label_source=u.label_source)


@router.get("/search", response_model=list[Card], tags=["search"])
def search(
    request: Request,
    session: SessionDep,
    q: str = Query(..., min_length=1, description="a concept in words, or a label"),
    model: str | None = Query(None, description="restrict to one model"),
    mode: str = Query(
        "auto", pattern="^(auto|text|label)$", description="text, label, or auto (text, else label)"
    ),
) -> list[Card]:
    """Zero-shot neuron search (``mode=text``: units ranked by how well their text vector
    matches the query), units whose label contains the query (``mode=label``), or the first
    that finds something (``auto``)."""
    if mode == "label":
        return search_service.search_labels(session, q, model=model)
    hits = search_service.search_text(session, request.app.state.store, q, model=model)[0]
    if hits or mode == "text":
        return hits
    return search_service.search_labels(session, q, model=model)


@router.get("/search/compose", response_model=CompositionOut, tags=["search"])
def compose(
    request: Request,
    session: SessionDep,
    q: str = Query(..., min_length=1, description="a concept in words"),
    model: str | None = Query(None, description="compose from this model's units"),
    layer: str | None = Query(None, description="compose from this layer's units only"),
) -> CompositionOut:
    """A text concept as a sparse combination of units: non-negative weights (L1 regression,
    at most 8 units among the 200 closest) whose weighted sum of unit text vectors
    approximates the query's, and the cosine between the two. Without ``model``, the model
    whose combination fits best."""
    store = request.app.state.store
    return search_service.compose_text(session, store, q, model=model, layer=layer)
