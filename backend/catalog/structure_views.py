"""What the layer page shows of its weight structure: the banding score, why a weights grid
is empty, k-means groups, the first-pair SVD, and the branch specialization form."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from sqlalchemy.orm import Session

from backend import urls
from backend.catalog import specialization as bs
from backend.catalog.structure import (
    NO_KERNELS,
    SVD_PAIR_BOX,
    SVD_PAIR_ICON,
    THUMBS_PER_GROUP,
    branch_result,
    layer_branches,
    payload,
)
from backend.catalog.structure_repository import StructureRepository
from backend.db.models import Layer, Model
from backend.errors import MicroscopeError
from backend.storage import ObjectStore
from backend.templating import is_htmx
from contracts import weight_views as wv


def _centroid_cells(centroid: list[float], kernel: tuple[int, int]) -> list[dict[str, Any]]:
    """SVG squares of a group's mean shape, from black (its least used position) to white
    (its most used): stretched, because unit-length shapes differ by little."""
    kh, kw = kernel
    cells = centroid[: kh * kw]
    lo, hi = min(cells, default=0.0), max(cells, default=1.0)
    span = (hi - lo) or 1.0
    return [
        {"x": i % kw, "y": i // kw, "o": round((v - lo) / span, 3)} for i, v in enumerate(cells)
    ]


def _groups(
    session: Session, model: Model, layer: Layer, p: wv.ClustersPayload
) -> list[dict[str, Any]]:
    shown = [g.units[:THUMBS_PER_GROUP] for g in p.groups]
    thumbs = StructureRepository(session).thumbnails(layer.id, [u for s in shown for u in s])
    kernel = p.kernel or (1, 1)
    return [
        {
            "n": len(g.units),
            "cells": _centroid_cells(g.centroid, kernel),
            "units": [
                {
                    "index": u,
                    "url": urls.unit_url(model.slug, layer.name, u),
                    "thumb": urls.object_url(thumbs[u]) if u in thumbs else None,
                }
                for u in units
            ],
        }
        for g, units in zip(p.groups, shown, strict=True)
    ]


def _svd_pair(
    session: Session, model: Model, layer: Layer, p: wv.SvdPairPayload
) -> dict[str, Any] | None:
    if p.reason or not p.units:
        return {"reason": p.reason} if p.reason else None
    xs, ys = [u[0] for u in p.units], [u[1] for u in p.units]
    pad, span = SVD_PAIR_ICON, SVD_PAIR_BOX - 2 * SVD_PAIR_ICON

    def place(v: float, lo: float, hi: float) -> float:
        return round(pad + span * ((v - lo) / (hi - lo) if hi > lo else 0.5), 1)

    thumbs = StructureRepository(session).thumbnails(layer.id, list(range(len(p.units))))
    half = SVD_PAIR_ICON / 2
    points = [
        {
            "i": i,
            "x": place(x, min(xs), max(xs)) - half,
            "y": SVD_PAIR_BOX - place(y, min(ys), max(ys)) - half,  # up: a larger 2nd value
            "url": urls.unit_url(model.slug, layer.name, i),
            "thumb": urls.object_url(thumbs[i]) if i in thumbs else None,
        }
        for i, (x, y) in enumerate(zip(xs, ys, strict=True))
    ]
    return {
        "reason": None,
        "points": points,
        "box": SVD_PAIR_BOX,
        "icon": SVD_PAIR_ICON,
        "explained": p.explained,
        "first": p.first,
        "second": p.second,
    }


def structure_context(
    request: Request, session: Session, model: Model, layer: Layer, view: str
) -> dict[str, Any]:
    """The layer page's structure sections (the weights view) and branch form (any view)."""
    store: ObjectStore = request.app.state.store
    out: dict[str, Any] = {"structure": None, "branch_form": None}
    if is_htmx(request):
        return out  # a page of the grid alone: none of this is drawn
    if view == "weights":
        out["structure"] = weights_sections(session, store, model, layer)
    branches, source = layer_branches(session, store, layer)
    if branches:
        out["branch_form"] = branch_form(request, session, store, layer, branches, source)
    return out


def weights_sections(
    session: Session, store: ObjectStore, model: Model, layer: Layer
) -> dict[str, Any]:
    """Banding, why the grid may be empty, groups and (on the first layer) the SVD pair."""
    if layer.kind in NO_KERNELS:
        return {"reason": NO_KERNELS[layer.kind]}
    banding = payload(session, store, layer, wv.BANDING)
    if banding is None:
        return {"reason": None, "computed": False}
    clusters = payload(session, store, layer, wv.CLUSTERS)
    pair = payload(session, store, layer, wv.SVD_PAIR)
    b: wv.BandingPayload = banding[0]
    groups = None
    if clusters is not None:
        c: wv.ClustersPayload = clusters[0]
        groups = {
            "reason": c.reason,
            "k": c.k,
            "kernel": c.kernel,
            "groups": _groups(session, model, layer, c) if not c.reason else [],
        }
    return {
        "reason": None,
        "computed": True,
        "banding": b,
        "groups": groups,
        "svd_pair": _svd_pair(session, model, layer, pair[0]) if pair else None,
        "banding_url": f"{urls.api_layer_url(model.slug, layer.name)}/banding",
    }


def branch_form(
    request: Request,
    session: Session,
    store: ObjectStore,
    layer: Layer,
    branches: list[tuple[str, int, int]],
    source: str,
) -> dict[str, Any]:
    """The form's choices, the layer's branches, and the answer when a set was asked for."""
    kind = request.query_params.get("set", "")
    q = request.query_params.get("q", "")
    result = error = None
    if kind:
        try:
            result = branch_result(session, store, layer, kind, q)
        except MicroscopeError as e:
            error = str(e)
    return {
        "branches": [{"name": n, "start": a, "stop": b, "size": b - a} for n, a, b in branches],
        "source": source,
        "families": StructureRepository(session).family_slugs(),
        "properties": {k: v[2] for k, v in bs.PROPERTY_SETS.items()},
        "kind": kind or "label",
        "q": q,
        "result": result,
        "error": error,
    }
