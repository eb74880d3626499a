"""Jinja templates from frontend/ (autoescaped)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.templating import Jinja2Templates

from backend import urls
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


def featvis_objective(a: Any) -> str:
    """The objective that made a feature visualization. Renders from before the top-16
    objective had its own name recorded "channel" with 16 top positions."""
    params = a.provenance.get("params") or {}
    name = str(params.get("objective") or a.variant.split("-")[0])
    return "channel_top16" if name == "channel" and params.get("top_positions") else name


templates.env.filters["objective"] = featvis_objective


def is_htmx(request) -> bool:  # type: ignore[no-untyped-def]
    """True for requests htmx makes (they get fragments, not whole pages)."""
    return request.headers.get("hx-request") == "true"
