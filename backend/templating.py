"""Jinja templates from frontend/ (autoescaped)."""

from __future__ import annotations

from pathlib import Path

from fastapi.templating import Jinja2Templates

from backend import urls
from backend.catalog.views import featvis_objective
from contracts.jobs import OBJECTIVE_TITLES

FRONTEND = Path(__file__).resolve().parent.parent / "frontend"

templates = Jinja2Templates(directory=str(FRONTEND / "templates"))
templates.env.autoescape = True
# Templates change with deployments, not while serving: skip the per-render mtime checks
# (13% of the grid page's time, measured).
templates.env.auto_reload = False
templates.env.globals.update(
    model_url=urls.model_url,
    layer_url=urls.layer_url,
    unit_url=urls.unit_url,
    object_url=urls.object_url,
    objectives=OBJECTIVE_TITLES,
    htmx_vendored=(FRONTEND / "static" / "vendor" / "htmx.min.js").exists(),
)


templates.env.filters["objective"] = featvis_objective


def is_htmx(request) -> bool:  # type: ignore[no-untyped-def]
    """True for requests htmx makes (they get fragments, not whole pages)."""
    return request.headers.get("hx-request") == "true"
