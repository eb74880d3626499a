"""How failures reach a visitor: one JSON error object (or the HTML error page), never a
traceback.

A database that is away (refused, restarting, timed out) answers 503 with ``Retry-After``;
anything else unexpected answers 500 and is logged with its traceback for the operator.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from sqlalchemy import exc as sa_exc

from backend.templating import templates

log = logging.getLogger("microscope.web")
RETRY_AFTER_SECONDS = 5


class ErrorOut(BaseModel):
    """Every error the API answers."""

    error: str
    detail: str
    status: int


# Documented on every operation (so clients, and the schema fuzzing in tests/reliability,
# know every answer's shape; FastAPI's own 422 shape is replaced by ours).
ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    status: {"model": ErrorOut, "description": text}
    for status, text in {
        400: "Bad request",
        401: "A write without the admin token or session",
        404: "Unknown model, layer, unit, job, family or dataset",
        405: "No such operation on this path (a unit index below 0, say)",
        409: "Not computed yet, or in conflict with what exists",
        413: "Request body over the limit",
        422: "Invalid input",
        503: "The database is away; try again (Retry-After)",
    }.items()
}


def wants_json(request: Request) -> bool:
    """API paths and clients that do not ask for HTML get JSON errors."""
    return request.url.path.startswith("/api/") or "text/html" not in request.headers.get(
        "accept", ""
    )


def error_response(
    request: Request,
    status: int,
    code: str,
    detail: str,
    headers: dict[str, str] | None = None,
) -> Response:
    """``{"error": code, "detail": detail, "status": status}``, or error.html for a browser."""
    if wants_json(request):
        return JSONResponse(
            {"error": code, "detail": detail, "status": status}, status, headers=headers
        )
    return templates.TemplateResponse(
        request,
        "error.html",
        {"status": status, "detail": detail},
        status_code=status,
        headers=headers,
    )


def database_away(exc: BaseException) -> bool:
    """True for errors that say the database cannot be reached now (not that a query is
    wrong): refused or dropped connections, timeouts, a pool with no connection to give."""
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError | sa_exc.TimeoutError)


def unavailable(request: Request) -> Response:
    return error_response(
        request,
        503,
        "unavailable",
        "the database cannot be reached right now; try again in a few seconds",
        {"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def add_failure_handlers(app: FastAPI) -> None:
    """Register the handlers for database outages and unexpected errors."""

    @app.exception_handler(sa_exc.SQLAlchemyError)
    async def _database_error(request: Request, exc: sa_exc.SQLAlchemyError) -> Response:
        if database_away(exc):
            log.warning("database unavailable: %s", exc.__class__.__name__)
            return unavailable(request)
        log.error("database error on %s", request.url.path, exc_info=exc)
        return _internal(request)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        # Starlette logs the traceback itself for this handler; the visitor sees no detail.
        return _internal(request)


def _internal(request: Request) -> Response:
    return error_response(
        request, 500, "internal_error", "the server failed on this request; it is in the log"
    )
