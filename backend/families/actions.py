"""Browser edits of families and labels by a signed-in admin.

Each form posts plainly (then a 303 redirect to the page it changed) or through htmx (then
the changed fragment comes back in place). Writes go through the same service functions as
the JSON API. Bad input is answered with the form again and its error (422), never a 500;
the failed write is rolled back first so nothing half-done is committed at the edge.
"""

from __future__ import annotations

from typing import Any, TypeVar
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response
from pydantic import BaseModel, ValidationError
from sqlalchemy.orm import Session

from backend import urls
from backend.catalog.pages import unit_context
from backend.deps import SessionDep, require_admin
from backend.errors import InvalidInput, MicroscopeError
from backend.families import service
from backend.families.service import FamilyCreate, FamilyUpdate, MemberRef
from backend.templating import is_htmx, templates

router = APIRouter(include_in_schema=False, dependencies=[Depends(require_admin)])

M = TypeVar("M", bound=BaseModel)


def _validated(cls: type[M], **fields: Any) -> M:
    """``cls(**fields)``, with pydantic's complaints as a readable InvalidInput."""
    try:
        return cls(**fields)
    except ValidationError as e:
        raise InvalidInput(
            "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
        ) from e


def member_ref(model: str, layer: str, unit: str, note: str = "") -> MemberRef:
    """A unit named by a form's text fields, or a readable InvalidInput."""
    model, layer, unit = model.strip(), layer.strip(), unit.strip()
    if not (model and layer and unit):
        raise InvalidInput("give a model, a layer and a unit index")
    if not unit.isdigit():
        raise InvalidInput(f"the unit index must be a whole number ≥ 0, not {unit!r}")
    note_ = note.strip() or None
    return _validated(MemberRef, model=model, layer=layer, unit=int(unit), note=note_)


def _answer(
    request: Request,
    *,
    page: str,
    fragment: str,
    context: dict[str, Any],
    error: dict[str, str] | None,
    redirect: str | None = None,
) -> Response:
    """The changed fragment for htmx; else a redirect, or the whole page with the error."""
    status = 422 if error else 200
    ctx = {**context, "admin": True, "error": error or {}, "partial": is_htmx(request)}
    if is_htmx(request):
        return templates.TemplateResponse(request, fragment, ctx, status_code=status)
    if error or redirect is None:
        return templates.TemplateResponse(request, page, ctx, status_code=status)
    return RedirectResponse(redirect, status_code=303)


def _family_context(session: Session, slug: str, **form: str) -> dict[str, Any]:
    fam = service.get_family(session, slug)
    return {"family": service.family_out(session, fam, with_members=True), "form": form}


def _failed(session: Session, exc: MicroscopeError, where: str) -> dict[str, str]:
    session.rollback()
    return {"form": where, "message": str(exc)}


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
        body = _validated(FamilyCreate, name=name.strip(), description=description.strip() or None)
        fam = service.create_family(session, body)
    except MicroscopeError as e:
        error = _failed(session, e, "create")
        ctx = {
            "families": service.list_families(session),
            "form": {"name": name, "description": description},
        }
        return _answer(
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


@router.post("/families/add-unit")
def add_unit_to_family(
    request: Request,
    session: SessionDep,
    model: str = Form(...),
    layer: str = Form(...),
    unit: int = Form(..., ge=0),
    family: str = Form(""),
    new_family: str = Form(""),
    view: str = Form(""),
) -> Response:
    """From a unit page: add the unit to an existing family, or to a new one by name."""
    ref = MemberRef(model=model, layer=layer, unit=unit)
    try:
        if new_family.strip():
            body = _validated(FamilyCreate, name=new_family.strip(), members=[ref])
            service.create_family(session, body)
        elif family:
            service.add_member(session, service.get_family(session, family), ref)
        else:
            raise InvalidInput("pick a family or type a name for a new one")
        error = None
    except MicroscopeError as e:
        error = _failed(session, e, "family")
    return _unit_answer(request, session, ref, view, error, new_family=new_family)


@router.post("/models/{model}/{layer:path}/{unit:int}/label")
def set_label(
    request: Request,
    session: SessionDep,
    model: str,
    layer: str,
    unit: int,
    label: str = Form(""),
    view: str = Form(""),
) -> Response:
    """From a unit page: set its label (an empty one clears it)."""
    try:
        if len(label) > 200:
            raise InvalidInput("a label has at most 200 characters")
        service.set_label(session, model, layer, unit, label)
        error = None
    except MicroscopeError as e:
        error = _failed(session, e, "label")
    ref = MemberRef(model=model, layer=layer, unit=unit)
    return _unit_answer(request, session, ref, view, error, label=label)


def _unit_answer(
    request: Request,
    session: Session,
    ref: MemberRef,
    view: str,
    error: dict[str, str] | None,
    **form: str,
) -> Response:
    ctx = unit_context(request, session, ref.model, ref.layer, ref.unit, view=view or None)
    url = urls.unit_url(ref.model, ref.layer, ref.unit)
    if view:
        url += "?" + urlencode({"view": view})
    return _answer(
        request,
        page="unit.html",
        fragment="_unit_curation.html",
        context={**ctx, "form": form if error else {}},
        redirect=url,
        error=error,
    )


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
        body = _validated(FamilyUpdate, name=name, description=description)
        service.update_family(session, fam, body)
        error = None
    except MicroscopeError as e:
        error = _failed(session, e, "edit")
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
        error = _failed(session, e, "add")
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
        error = _failed(session, e, "remove")
    return _family_answer(request, session, slug, error)


def _family_answer(
    request: Request, session: Session, slug: str, error: dict[str, str] | None, **form: str
) -> Response:
    return _answer(
        request,
        page="family.html",
        fragment="_family.html",
        context=_family_context(session, slug, **form),
        redirect=f"/families/{slug}",
        error=error,
    )
