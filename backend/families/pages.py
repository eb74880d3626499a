"""Pages: the families index, a family's neuron cards, search."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from backend.deps import SessionDep
from backend.families import service
from backend.templating import templates

router = APIRouter(include_in_schema=False)


@router.get("/families", response_class=HTMLResponse)
def families_page(request: Request, session: SessionDep) -> HTMLResponse:
    return templates.TemplateResponse(
        request, "families.html", {"families": service.list_families(session)}
    )


@router.get("/families/{slug}", response_class=HTMLResponse)
def family_page(request: Request, slug: str, session: SessionDep) -> HTMLResponse:
    fam = service.family_out(session, service.get_family(session, slug), with_members=True)
    return templates.TemplateResponse(request, "family.html", {"family": fam})


@router.get("/search", response_class=HTMLResponse)
def search_page(
    request: Request,
    session: SessionDep,
    q: str = Query(""),
    model: str | None = None,
    mode: str = Query("text", pattern="^(auto|text|label)$"),
) -> HTMLResponse:
    results: list[service.Card] = []
    used: list[str] = []
    if q and mode == "text":
        results, used = service.search_text(session, request.app.state.store, q, model=model)
    labels = service.search_labels(session, q, model=model) if q else []
    return templates.TemplateResponse(
        request,
        "search.html",
        {"q": q, "results": results, "used": used, "labels": labels, "model": model, "mode": mode},
    )
