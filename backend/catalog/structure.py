"""A layer's weight structure as the pages and the API show it: circuits on the unit page;
banding, k-means groups, the first-pair SVD and branch specialization on the layer page.
Everything is read from the weight-views job's JSON (contracts/weight_views.py)."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy.orm import Session

from backend import urls
from backend.catalog import specialization as bs
from backend.catalog.repository import CatalogRepository
from backend.catalog.structure_repository import StructureRepository
from backend.db.models import Artifact, Layer, Model
from backend.errors import InvalidInput, NotFoundError, NotReady
from backend.storage import NotFound, ObjectStore
from contracts import weight_views as wv

# Layer kinds with no convolution kernels: why no weight view applies to them.
NO_KERNELS = {
    "linear": "its units are pooled features or a fully connected layer's outputs: they have "
    "no convolution kernel, so there is nothing spatial to draw, band, group or trace",
    "head": "its units are the classifier's outputs (a fully connected layer): they have no "
    "convolution kernel, so there is nothing spatial to draw, band, group or trace",
    "mlp": "a transformer MLP's units are rows of a linear layer over tokens: no convolution "
    "kernel, so there is nothing spatial to draw, band, group or trace",
}
THUMBS_PER_GROUP = 12
SVD_PAIR_BOX = 360  # the first-pair scatter's side, in SVG units
SVD_PAIR_ICON = 18


def payload(
    session: Session, store: ObjectStore, layer: Layer, kind: str
) -> tuple[Any, Artifact] | None:
    """The layer's newest stored payload of ``kind`` (a contracts model) and its row."""
    arts = CatalogRepository(session).layer_artifacts(layer.id, [kind])
    for art in sorted(arts, key=lambda a: a.created_at, reverse=True):
        try:
            data = json.loads(store.get(art.storage_key))
        except (NotFound, ValueError):
            continue
        return wv.PAYLOADS[kind].model_validate(data), art
    return None


def required(session: Session, store: ObjectStore, model: Model, layer: Layer, kind: str) -> Any:
    """A payload for the API: the stored one; one that says why for layers without kernels;
    NotReady while the weight-views job has not run on the layer."""
    found = payload(session, store, layer, kind)
    if found is not None:
        return found[0]
    if layer.kind in NO_KERNELS:
        return wv.PAYLOADS[kind](reason=NO_KERNELS[layer.kind])
    raise NotReady(
        f"the weight views of {layer.name} are not computed yet: "
        f"POST {urls.api_model_url(model.slug)}/weights"
    )


def _links(
    session: Session, model: Model, other: Layer, links: wv.Links | None
) -> list[dict[str, Any]]:
    rows = [("+", i, w) for i, w in (links.positive if links else [])]
    rows += [("-", i, w) for i, w in (links.negative if links else [])]
    thumbs = StructureRepository(session).thumbnails(other.id, [i for _, i, _ in rows])
    top = max((abs(w) for _, _, w in rows), default=1.0) or 1.0
    return [
        {
            "sign": sign,
            "index": i,
            "weight": w,
            "width": max(2.0, 100.0 * abs(w) / top),
            "url": urls.unit_url(model.slug, other.name, i),
            "thumb": urls.object_url(thumbs[i]) if i in thumbs else None,
        }
        for sign, i, w in rows
    ]


def _sentence(layer: Layer, path: wv.CircuitPath, side: str) -> str:
    """One plain sentence on how the two layers are joined."""
    src, dst = (path.layer, layer.name) if side == "inputs" else (layer.name, path.layer)
    if path.reason:
        return f"No circuit from {src} to {dst}: {path.reason}."
    if path.method == "weights":
        return (
            f"One convolution ({path.convs[0]}) joins {src} to {dst}: these are its weights, "
            "BatchNorm folded, summed over kernel positions."
        )
    return (
        f"{src} and {dst} are not joined by one weight: these are the expanded weights of "
        f"the linearised path between them ({len(path.convs)} convolutions, with residual "
        "additions and concatenations as they are; BatchNorm folded, activations and gates "
        "ignored), summed over kernel positions."
    )


def circuits_view(
    session: Session, store: ObjectStore, model: Model, layer: Layer, unit: int
) -> dict[str, Any] | None:
    """The unit's strongest inputs (previous layer) and outputs (next layer), with
    thumbnails and links, and how each pair of layers is joined."""
    found = payload(session, store, layer, wv.CIRCUITS)
    if found is None:
        return None
    p: wv.CircuitsPayload = found[0]
    if p.reason:
        return {"reason": p.reason, "sides": []}
    mine = p.units[unit] if 0 <= unit < len(p.units) else wv.UnitLinks()
    repo = CatalogRepository(session)
    sides: list[dict[str, Any]] = []
    for side, path, links in (
        ("inputs", p.inputs, mine.inputs),
        ("outputs", p.outputs, mine.outputs),
    ):
        if path is None:
            edge = "earlier" if side == "inputs" else "later"
            sentence = f"No {edge} feature-map layer is registered beside {layer.name}."
            sides.append({"side": side, "layer": None, "links": [], "sentence": sentence})
            continue
        other = repo.get_layer(model.id, path.layer)
        sides.append(
            {
                "side": side,
                "layer": path.layer,
                "layer_url": urls.layer_url(model.slug, path.layer),
                "method": path.method,
                "links": _links(session, model, other, links) if other is not None else [],
                "sentence": _sentence(layer, path, side),
            }
        )
    return {"reason": None, "sides": sides, "url": urls.api_layer_url(model.slug, layer.name)}


def layer_branches(
    session: Session, store: ObjectStore, layer: Layer
) -> tuple[list[tuple[str, int, int]], str]:
    """The layer's branches and where they come from: the catalog's own list when the layer
    has one, else those the weight-views job read from the network (or none)."""
    listed = getattr(layer, "branches", None)  # the catalog's column, where it exists
    if listed:
        return bs.as_branches(listed), "catalog"
    found = payload(session, store, layer, wv.BRANCHES)
    if found is None or not found[0].branches:
        return [], (found[0].reason or "") if found else ""
    return bs.as_branches(b.model_dump() for b in found[0].branches), found[0].source


def unit_set(
    session: Session, store: ObjectStore, layer: Layer, kind: str, q: str
) -> tuple[list[int], str]:
    """The units of a set chosen on the page, and a description of it."""
    q = q.strip()
    if kind not in bs.SET_KINDS:
        raise InvalidInput(f"unknown set {kind!r}; one of {', '.join(bs.SET_KINDS)}")
    if not q:
        raise InvalidInput(f"say which {kind}")
    repo = StructureRepository(session)
    if kind == "label":
        units = [i for i, label in repo.labelled(layer.id, q) if bs.label_matches(label, q)]
        return sorted(units), f"units labelled with the word “{q}”"
    if kind == "family":
        members = repo.family_units(layer.id, q)
        if members is None:
            raise NotFoundError("family", q)
        return members, f"members of family {q} in {layer.name}"
    if kind == "units":
        return bs.parse_units(q, layer.unit_count), "units chosen by index"
    found = payload(session, store, layer, wv.PROPERTIES)
    if found is None or found[0].reason:
        raise InvalidInput(
            f"no weight properties for {layer.name}"
            + (f": {found[0].reason}" if found and found[0].reason else " yet")
        )
    prop, _, description = bs.PROPERTY_SETS.get(q, ("", False, ""))
    values = getattr(found[0], prop, None) if prop else None
    return bs.property_set(values or [], q), description


def branch_result(
    session: Session, store: ObjectStore, layer: Layer, kind: str, q: str
) -> dict[str, Any]:
    """How a chosen set of units falls across the layer's branches, with its chance."""
    branches, source = layer_branches(session, store, layer)
    if not branches:
        raise InvalidInput(f"{layer.name} has no branches" + (f": {source}" if source else ""))
    units, description = unit_set(session, store, layer, kind, q)
    spec = bs.specialization(branches, units, layer.unit_count)
    best = spec.best
    return {
        "set": {"kind": kind, "q": q, "description": description, "units": units},
        "total": spec.total,
        "chosen": spec.chosen,
        "outside": spec.outside,
        "source": source,
        "branches": [
            {
                "name": b.name,
                "start": b.start,
                "stop": b.stop,
                "size": b.size,
                "count": b.count,
                "expected": round(b.expected, 3),
                "p_value": b.p_value,
                "share": b.count / spec.chosen if spec.chosen else 0.0,
            }
            for b in spec.branches
        ],
        "best": best.name if best and spec.chosen else None,
        "best_p": best.p_value if best and spec.chosen else None,
        "any_branch_p": spec.any_branch if spec.chosen else None,
    }
