"""Permalinks: readable, stable URLs for models, layers, units and objects."""

from __future__ import annotations

from urllib.parse import quote

API = "/api/v1"


def _q(text: str) -> str:
    # Dots stay readable; slashes inside layer names stay as path separators.
    return quote(text, safe="./-_")


def model_url(model: str) -> str:
    return f"/models/{_q(model)}"


def layer_url(model: str, layer: str) -> str:
    return f"/models/{_q(model)}/{_q(layer)}"


def unit_url(model: str, layer: str, unit: int) -> str:
    return f"/models/{_q(model)}/{_q(layer)}/{int(unit)}"


def api_model_url(model: str) -> str:
    return f"{API}/models/{_q(model)}"


def api_layer_url(model: str, layer: str) -> str:
    return f"{API}/models/{_q(model)}/layers/{_q(layer)}"


def api_unit_url(model: str, layer: str, unit: int) -> str:
    return f"{api_layer_url(model, layer)}/units/{int(unit)}"


def object_url(key: str) -> str:
    return f"/objects/{key}"
