"""JSON API for a layer's weight structure: circuits, banding, k-means groups, weight
properties, branches (with specialization of a set of units) and the first-pair SVD.

Registered before the catalog's routes: their ``/layers/{layer:path}`` would take these
paths' suffixes for part of a layer name.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request

from backend import urls
from backend.catalog import service
from backend.catalog.structure import branch_result, layer_branches, required
from backend.deps import SessionDep
from backend.errors import InvalidInput
from contracts import weight_views as wv

router = APIRouter(prefix=urls.API, tags=["weights"])
LAYER = "/models/{model}/layers/{layer:path}"


def _view(request: Request, session: SessionDep, model: str, layer: str, kind: str) -> Any:
    m = service.get_model(session, model)
    lyr = service.get_layer(session, m, layer)
    return required(session, request.app.state.store, m, lyr, kind)


@router.get(f"{LAYER}/circuits", response_model=None)
def circuits(
    request: Request,
    model: str,
    layer: str,
    session: SessionDep,
    unit: int | None = Query(None, ge=0, description="one unit's links only"),
) -> dict[str, Any]:
    """Each unit's strongest inputs (previous layer) and outputs (next layer): summed weights
    of one convolution, or the expanded weights of the linearised path, and which."""
    p: wv.CircuitsPayload = _view(request, session, model, layer, wv.CIRCUITS)
    out = p.model_dump(mode="json")
    if unit is not None and not p.reason:
        if unit >= len(p.units):
            raise InvalidInput(f"layer {layer} has {len(p.units)} units")
        del out["units"]
        out["unit"] = {"index": unit, **p.units[unit].model_dump(mode="json")}
    return out


@router.get(f"{LAYER}/banding", response_model=wv.BandingPayload)
def banding(request: Request, model: str, layer: str, session: SessionDep) -> wv.BandingPayload:
    """The layer's banding score: mean over units of the share of their NMF maps' structure
    in horizontal bands minus the share in vertical ones (+1 horizontal, -1 vertical)."""
    result: wv.BandingPayload = _view(request, session, model, layer, wv.BANDING)
    return result


@router.get(f"{LAYER}/clusters", response_model=wv.ClustersPayload)
def clusters(request: Request, model: str, layer: str, session: SessionDep) -> wv.ClustersPayload:
    """k-means groups (k from 4 to 19, by silhouette) of the units' spatial weight shapes."""
    result: wv.ClustersPayload = _view(request, session, model, layer, wv.CLUSTERS)
    return result


@router.get(f"{LAYER}/properties", response_model=wv.PropertiesPayload)
def properties(
    request: Request, model: str, layer: str, session: SessionDep
) -> wv.PropertiesPayload:
    """Each unit's colour and spatial frequency, from first-layer weights (carried along the
    linearised path for deeper layers)."""
    result: wv.PropertiesPayload = _view(request, session, model, layer, wv.PROPERTIES)
    return result


@router.get(f"{LAYER}/svd-pair", response_model=wv.SvdPairPayload)
def svd_pair(request: Request, model: str, layer: str, session: SessionDep) -> wv.SvdPairPayload:
    """On the first layer: its units placed by the first two singular vectors of |W| summed
    over kernel positions, W the next convolution's weights, with each vector's share."""
    result: wv.SvdPairPayload = _view(request, session, model, layer, wv.SVD_PAIR)
    return result


@router.get(f"{LAYER}/branches", response_model=None)
def branches(
    request: Request,
    model: str,
    layer: str,
    session: SessionDep,
    set_kind: str | None = Query(None, alias="set", description="label|family|units|property"),
    q: str = Query("", description="the label word, family slug, units (3,7,10-20) or property"),
) -> dict[str, Any]:
    """The layer's branches; with a set of units, how it falls across them and the
    hypergeometric chance of so many in each branch."""
    m = service.get_model(session, model)
    lyr = service.get_layer(session, m, layer)
    store = request.app.state.store
    found, source = layer_branches(session, store, lyr)
    out: dict[str, Any] = {
        "layer": lyr.name,
        "source": source if found else None,
        "reason": None if found else (source or "no branches"),
        "branches": [{"name": n, "start": a, "stop": b} for n, a, b in found],
    }
    if set_kind is not None:
        out["specialization"] = branch_result(session, store, lyr, set_kind, q)
    return out
