"""An admin's edits from a unit page (its label, its families), answered with the unit page
or, through htmx, its curation panel (see ``backend.forms``)."""

from __future__ import annotations

from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import Response
from sqlalchemy.orm import Session

from backend import urls
from backend.catalog.service import set_label as set_unit_label
from backend.deps import SessionDep, require_admin
from backend.errors import InvalidInput, MicroscopeError
from backend.families import service as families
from backend.families.schemas import FamilyCreate, MemberRef
from backend.forms import answer, failed, validated
from backend.unitpage.pages import unit_context

router = APIRouter(include_in_schema=False, dependencies=[Depends(require_admin)])


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
            body = validated(FamilyCreate, name=new_family.strip(), members=[ref])
            families.create_family(session, body)
        elif family:
            families.add_member(session, families.get_family(session, family), ref)
        else:
            raise InvalidInput("pick a family or type a name for a new one")
        error = None
    except MicroscopeError as e:
        error = failed(session, e, "family")
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
        set_unit_label(session, model, layer, unit, label)
        error = None
    except MicroscopeError as e:
        error = failed(session, e, "label")
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
    """The unit page (or its curation panel) after an edit, with the form's error if any."""
    ctx = unit_context(request, session, ref.model, ref.layer, ref.unit, view=view or None)
    url = urls.unit_url(ref.model, ref.layer, ref.unit)
    if view:
        url += "?" + urlencode({"view": view})
    return answer(
        request,
        page="unit.html",
        fragment="_unit_curation.html",
        context={**ctx, "form": form if error else {}},
        redirect=url,
        error=error,
    )
