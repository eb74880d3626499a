"""Answering an admin's form posts: plainly (a 303 redirect to the page it changed) or through
htmx (the changed fragment in place). Bad input is answered with the form again and its error
(422), never a 500; the failed write is rolled back first so nothing half-done is committed
at the edge."""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import RedirectResponse, Response
from pydantic import BaseModel, ValidationError
from sqlalchemy.orm import Session

from backend.errors import InvalidInput, MicroscopeError
from backend.templating import is_htmx, templates

M = TypeVar("M", bound=BaseModel)


def validated(cls: type[M], **fields: Any) -> M:
    """``cls(**fields)``, with pydantic's complaints as a readable InvalidInput."""
    try:
        return cls(**fields)
    except ValidationError as e:
        raise InvalidInput(
            "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
        ) from e


def failed(session: Session, exc: MicroscopeError, where: str) -> dict[str, str]:
    """Roll the failed write back; the error to show beside the form named ``where``."""
    session.rollback()
    return {"form": where, "message": str(exc)}


def answer(
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
