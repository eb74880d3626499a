"""Pages: the families index, a family's neuron cards, search."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from backend.deps import SessionDep, is_admin
from backend.errors import MicroscopeError
from backend.families import search as search_service
from backend.families import service
from backend.families.schemas import Card
from backend.templating import templates

router = APIRouter(include_in_schema=False)


@router.get("/families", response_class=HTMLResponse)
def families_page(request: Request, session: SessionDep) -> HTMLResponse:
    ctx = {"families": service.list_families(session), "admin": is_admin(request)}
    return templates.TemplateResponse(request, "families.html", ctx)


@router.get("/families/{slug}", response_class=HTMLResponse)
def family_page(request: Request, slug: str, session: SessionDep) -> HTMLResponse:
    fam = service.family_out(session, service.get_family(session, slug), with_members=True)
    ctx = {"family": fam, "admin": is_admin(request)}
    return templates.TemplateResponse(request, "family.html", ctx)


@router.get("/search", response_class=HTMLResponse)
def search_page(
    request: Request,
    session: SessionDep,
    q: str = Query(""),
    model: str | None = None,
    layer: str | None = None,
    mode: str = Query("text", pattern="^(auto|text|label)$"),
) -> HTMLResponse:
    results: list[Card] = []
    used: list[str] = []
    composition = None
    if q.strip() and mode == "text":
        store = request.app.state.store
        results, used = search_service.search_text(session, store, q, model=model)
        try:
            composition = search_service.compose_text(session, store, q, model=model, layer=layer)
        except MicroscopeError:  # no search index (yet): the results say so already
            composition = None
    labels = search_service.search_labels(session, q, model=model) if q else []
    ctx = {
        "q": q,
        "results": results,
        "used": used,
        "composition": composition,
        "labels": labels,
        "model": model,
        "layer": layer,
        "mode": mode,
    }
    return templates.TemplateResponse(request, "search.html", ctx)
