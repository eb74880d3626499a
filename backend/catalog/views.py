"""What each tab of the unit page shows, built from the unit's artifacts."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend import urls
from backend.catalog.schemas import ArtifactOut
from backend.db.models import Image
from backend.storage import NotFound, ObjectStore
from contracts.artifacts import (
    DatasetExamples,
    Histogram,
    JsonModel,
    RankedStrings,
    WeightsFactors,
    WeightsSvd,
)

J = TypeVar("J", bound=JsonModel)

# Artifact kind -> the tab that shows it, in tab order.
VIEW_OF_KIND = {
    "featvis": "featvis",
    "dataset_examples": "examples",
    "example_crop": "examples",
    "example_heatmap": "examples",
    "text_fv": "text",
    "rendered_words": "text",
    "weights_nmf": "weights",
    "weights_svd": "weights",
    "condprob": "condprob",
    "typographic": "text",
}
VIEW_TITLES = {
    "featvis": "Feature visualization",
    "examples": "Dataset examples",
    "text": "Text",
    "condprob": "Conditional probability",
    "weights": "Weights",
    "other": "Other",
}


def group_views(by_kind: dict[str, list[ArtifactOut]]) -> dict[str, dict[str, list[ArtifactOut]]]:
    """view -> kind -> artifacts, views in a fixed order."""
    views: dict[str, dict[str, list[ArtifactOut]]] = {}
    for view in VIEW_TITLES:
        for kind, arts in by_kind.items():
            if VIEW_OF_KIND.get(kind, "other") == view:
                views.setdefault(view, {})[kind] = arts
    return views


def read_json(store: ObjectStore, art: ArtifactOut | None, shape: type[J]) -> J | None:
    """A JSON artifact read as the contract its writer used; None when there is none, its
    bytes are gone or they are not that shape (a page shows the view as missing)."""
    if art is None:
        return None
    try:
        return shape.model_validate_json(store.get(art.storage_key))
    except (NotFound, ValidationError):
        return None


def read_json_dict(store: ObjectStore, art: ArtifactOut | None) -> dict[str, Any] | None:
    """A JSON artifact that has no contract model yet (the analyses' plots), as a dict; None
    when there is none or its bytes are gone or not a JSON object."""
    if art is None:
        return None
    try:
        data = json.loads(store.get(art.storage_key))
    except (NotFound, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _ranked(store: ObjectStore, arts: list[ArtifactOut]) -> list[dict[str, Any]]:
    ranked = read_json(store, next(iter(arts), None), RankedStrings)
    if ranked is None:
        return []
    scores = [t.score for t in ranked.top]
    # Bars from zero, or from the lowest score when some are negative (climbed strings pay a
    # penalty and may all score below zero).
    lo = min(0.0, *scores) if scores else 0.0
    span = (max(scores, default=1.0) - lo) or 1.0
    return [
        {"text": t.text, "score": t.score, "width": max(2.0, 100.0 * (t.score - lo) / span)}
        for t in ranked.top
    ]


def text_view(store: ObjectStore, arts: dict[str, list[ArtifactOut]]) -> dict[str, Any] | None:
    """The unit's top strings (text feature visualization), its hill-climbed token strings
    (CLIP) and its top rendered words."""
    fv = arts.get("text_fv") or []
    strings = _ranked(store, [a for a in fv if a.variant == ""])
    climbed = _ranked(store, [a for a in fv if a.variant == "hill_climb"])
    words = _ranked(store, arts.get("rendered_words") or [])
    if not strings and not climbed and not words:
        return None
    return {"top": strings, "climbed": climbed, "words": words}


SVD_BOX = 240  # the SVD scatter plot's side, in SVG units
SVD_PAD = 10


def svd_points(units: list[tuple[float, float]], unit: int, unit_url: str) -> dict[str, Any]:
    """SVG circles for every unit's (first, second) singular-vector coordinates, scaled into
    the plot; ``unit`` is the one highlighted, ``unit_url`` its page (the others are beside it)."""
    xs, ys = [p[0] for p in units], [p[1] for p in units]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    span = SVD_BOX - 2 * SVD_PAD
    base = unit_url.rsplit("/", 1)[0]

    def place(v: float, lo: float, hi: float) -> float:
        return round(SVD_PAD + span * ((v - lo) / (hi - lo) if hi > lo else 0.5), 1)

    points = [
        # Up is a larger second coordinate, as in a plot.
        {"i": i, "x": place(x, x0, x1), "y": SVD_BOX - place(y, y0, y1), "url": f"{base}/{i}"}
        for i, (x, y) in enumerate(zip(xs, ys, strict=True))
    ]
    return {
        "points": [p for p in points if p["i"] != unit],
        "current": points[unit] if 0 <= unit < len(points) else None,
        "box": SVD_BOX,
        "coords": units[unit] if 0 <= unit < len(units) else None,
    }


def weights_view(
    store: ObjectStore, arts: dict[str, list[ArtifactOut]], unit: int, unit_url: str
) -> dict[str, Any] | None:
    """The unit's NMF-RGB image, what its layer's three colours read, and the layer's SVD
    placement with this unit highlighted."""
    nmf = arts.get("weights_nmf") or []
    image = next((a for a in nmf if a.variant == "rgb"), None)
    # A branch fitted on its own (an Inception module's) has its own colours.
    branch = (image.meta or {}).get("branch") if image is not None else None
    want = f"factors-{branch}" if branch else "factors"
    factors_art = next((a for a in nmf if a.variant == want), None)
    factors = read_json(store, factors_art, WeightsFactors)
    svd_art = next(iter(arts.get("weights_svd") or []), None)
    svd = read_json(store, svd_art, WeightsSvd)
    if image is None and svd is None:
        # A layer drawn branch by branch, and this unit's branch has no images: its kernels
        # are 1x1 (the job draws every branch with a spatial kernel).
        if any(a.variant.startswith("factors-") for a in nmf):
            return {"image": None, "factors": None, "svd": None, "branch": None, "flat": True}
        return None
    placement = None
    if svd_art is not None and svd is not None and svd.units:
        placement = {
            **svd_points(svd.units, unit, unit_url),
            "inputs": svd.inputs,
            "explained": (svd_art.meta or {}).get("explained"),
            "url": svd_art.url,
        }
    return {"image": image, "factors": factors, "svd": placement, "branch": branch}


def histogram_bars(hist: Histogram, width: int = 320, height: int = 80) -> list[dict[str, float]]:
    """SVG rectangles for a histogram's counts."""
    counts = hist.counts
    if not counts:
        return []
    top = max(counts) or 1
    w = width / len(counts)
    return [
        {
            "x": i * w,
            "w": max(w - 1, 1),
            "h": height * c / top,
            "y": height - height * c / top,
            "c": c,
        }
        for i, c in enumerate(counts)
    ]


def examples_view(
    session: Session, store: ObjectStore, arts: dict[str, list[ArtifactOut]]
) -> dict[str, Any] | None:
    """Sheets (crops and heatmaps), the quantile strata as thumbnails, the histogram."""
    index = next(iter(arts.get("dataset_examples") or []), None)
    data = read_json(store, index, DatasetExamples)
    if index is None or data is None:
        return None
    sheets: dict[str, dict[str, str]] = {}
    for kind in ("example_crop", "example_heatmap"):
        for a in arts.get(kind, []):
            sheets.setdefault(a.variant, {})[kind] = a.url
    strata_ids = {i for s in data.strata for i in s.image_ids}
    thumbs: dict[int, str] = {}
    if strata_ids:
        rows = session.execute(
            select(Image.id, Image.thumb_key).where(Image.id.in_(strata_ids))
        ).all()
        thumbs = {i: urls.object_url(k) for i, k in rows if k}
    strata = [
        {
            "lo": s.lo,
            "hi": s.hi,
            "images": [
                {"id": i, "score": sc, "thumb": thumbs.get(i)}
                for i, sc in zip(s.image_ids, s.scores, strict=False)
            ],
        }
        for s in reversed(data.strata)  # highest activations first
    ]
    return {
        "top": data.top,
        "negative": data.negative,
        "sheets": sheets,
        "strata": strata,
        "histogram": data.histogram,
        "bars": histogram_bars(data.histogram),
        "stats": data.stats,
        "index_url": index.url,
    }
