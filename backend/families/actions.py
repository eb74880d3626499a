"""Browser edits of families by a signed-in admin, on the families' pages (answered as
``backend.forms`` describes; writes go through the same service functions as the JSON API).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.orm import Session

from backend.deps import SessionDep, require_admin
from backend.errors import InvalidInput, MicroscopeError
from backend.families import service
from backend.families.schemas import FamilyCreate, FamilyUpdate, MemberRef
from backend.forms import answer, failed, validated
from backend.templating import is_htmx

router = APIRouter(include_in_schema=False, dependencies=[Depends(require_admin)])


def member_ref(model: str, layer: str, unit: str, note: str = "") -> MemberRef:
    """A unit named by a form's text fields, or a readable InvalidInput."""
    model, layer, unit = model.strip(), layer.strip(), unit.strip()
    if not (model and layer and unit):
        raise InvalidInput("give a model, a layer and a unit index")
    if not unit.isdigit():
        raise InvalidInput(f"the unit index must be a whole number ≥ 0, not {unit!r}")
    note_ = note.strip() or None
    return validated(MemberRef, model=model, layer=layer, unit=int(unit), note=note_)


def _family_context(session: Session, slug: str, **form: str) -> dict[str, Any]:
    fam = service.get_family(session, slug)
    return {"family": service.family_out(session, fam, with_members=True), "form": form}


@router.post("/families")
def create_family(
    request: Request,
    session: SessionDep,
    name: str = Form(""),
    description: str = Form(""),
) -> Response:
    try:
        if not name.strip():
            raise InvalidInput("a family needs a name")
        body = validated(FamilyCreate, name=name.strip(), description=description.strip() or None)
        fam = service.create_family(session, body)
    except MicroscopeError as e:
        error = failed(session, e, "create")
        ctx = {
            "families": service.list_families(session),
            "form": {"name": name, "description": description},
        }
        return answer(
            request,
            page="families.html",
            fragment="_family_create.html",
            context=ctx,
            error=error,
        )
    url = f"/families/{fam.slug}"
    if is_htmx(request):  # a new family opens on its own page, ready for members
        return Response(status_code=200, headers={"HX-Redirect": url})
    return RedirectResponse(url, status_code=303)


@router.post("/families/{slug}/edit")
def edit_family(
    request: Request,
    session: SessionDep,
    slug: str,
    name: str = Form(""),
    description: str = Form(""),
) -> Response:
    """Rename a family or change its description; its slug stays."""
    fam = service.get_family(session, slug)
    try:
        if not name.strip():
            raise InvalidInput("a family needs a name")
        body = validated(FamilyUpdate, name=name, description=description)
        service.update_family(session, fam, body)
        error = None
    except MicroscopeError as e:
        error = failed(session, e, "edit")
    form = {"name": name, "description": description} if error else {}
    return _family_answer(request, session, slug, error, **form)


@router.post("/families/{slug}/members")
def add_member(
    request: Request,
    session: SessionDep,
    slug: str,
    model: str = Form(""),
    layer: str = Form(""),
    unit: str = Form(""),
    note: str = Form(""),
) -> Response:
    fam = service.get_family(session, slug)
    try:
        service.add_member(session, fam, member_ref(model, layer, unit, note))
        error = None
    except MicroscopeError as e:
        error = failed(session, e, "add")
    form = {"model": model, "layer": layer, "unit": unit, "note": note} if error else {}
    return _family_answer(request, session, slug, error, **form)


@router.post("/families/{slug}/members/remove")
def remove_member(
    request: Request,
    session: SessionDep,
    slug: str,
    model: str = Form(""),
    layer: str = Form(""),
    unit: str = Form(""),
) -> Response:
    fam = service.get_family(session, slug)
    try:
        service.remove_member(session, fam, member_ref(model, layer, unit))
        error = None
    except MicroscopeError as e:
        error = failed(session, e, "remove")
    return _family_answer(request, session, slug, error)


def _family_answer(
    request: Request, session: Session, slug: str, error: dict[str, str] | None, **form: str
) -> Response:
    return answer(
        request,
        page="family.html",
        fragment="_family.html",
        context=_family_context(session, slug, **form),
        redirect=f"/families/{slug}",
        error=error,
    )
