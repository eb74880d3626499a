"""Conditional probability plots and typographic attacks: queue them, and what pages show."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from backend import urls
from backend.analyses.repository import AnalysesRepository
from backend.catalog import service as catalog
from backend.catalog.repository import CatalogRepository
from backend.catalog.schemas import ArtifactOut
from backend.catalog.views import read_json_dict
from backend.datasets.service import get_dataset
from backend.db.models import Dataset, Job, Model
from backend.errors import InvalidInput, NotFoundError, NotReady
from backend.jobs.service import enqueue_job
from backend.storage import ObjectStore
from contracts.jobs import DEFAULT_CONCEPTS, CondProbParams, TypographicParams

# Category colours (Tableau 20): one per concept, in the concept list's order.
PALETTE = (
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f", "#bab0ac", "#a0cbe8", "#ffbe7d", "#ff9d9a", "#86bcb6", "#8cd17d", "#f1ce63",
    "#d4a6c8", "#fabfd2", "#d7b5a6", "#79706e",
)  # fmt: skip
PLOT_W, PLOT_H, PLOT_TOP = 480.0, 160.0, 6.0


def dataset_for(session: Session, model: Model, slug: str | None) -> Dataset:
    """The dataset named, else the one the model's examples were mined on."""
    if slug:
        return get_dataset(session, slug)
    ds = AnalysesRepository(session).mined_dataset(model.id)
    if ds is None:
        raise NotReady(f"model {model.slug} has no dataset examples yet: name a dataset")
    return ds


def parse_words(raw: str | Sequence[str]) -> list[str]:
    """Words or concepts from a list or from text split at commas and new lines, deduplicated."""
    items = re.split(r"[,\n]", raw) if isinstance(raw, str) else list(raw)
    return list(dict.fromkeys(w.strip() for w in items if w and w.strip()))


def _check_layers(session: Session, model: Model, layers: Sequence[str]) -> None:
    repo = CatalogRepository(session)
    unknown = [x for x in layers if repo.get_layer(model.id, x) is None]
    if unknown:
        raise InvalidInput(f"model {model.slug!r} has no layers {unknown}")


def request_condprob(
    session: Session,
    model: Model,
    dataset: Dataset,
    *,
    concepts: Sequence[str] | None = None,
    layers: Sequence[str] | None = None,
    priority: int = 6,
) -> Job:
    """Conditional probability plots of ``layers``' units (default: the default layers) over
    ``concepts`` (default: the broad categories)."""
    chosen = parse_words(concepts) if concepts is not None else list(DEFAULT_CONCEPTS)
    if not 2 <= len(chosen) <= 40:
        raise InvalidInput("give between 2 and 40 concepts")
    if layers is not None:
        _check_layers(session, model, layers)
    params = CondProbParams(
        model_id=model.id,
        dataset_id=dataset.id,
        concepts=chosen,
        layers=sorted(layers) if layers is not None else "default",
    )
    return enqueue_job(
        session, params, queue="gpu", priority=priority, model_id=model.id, dataset_id=dataset.id
    )


def request_typographic(
    session: Session,
    model: Model,
    dataset: Dataset,
    *,
    words: Sequence[str] | None = None,
    photos: int | None = None,
    priority: int = 6,
) -> Job:
    """A typographic attack: ``words`` (class names; default: chosen from the classes)
    written on ``photos`` of the dataset's images."""
    chosen = parse_words(words) if words is not None else None
    if chosen is not None and not 1 <= len(chosen) <= 40:
        raise InvalidInput("give between 1 and 40 words")
    unknown = [w for w in chosen or [] if model.class_names and w not in model.class_names]
    if unknown:
        raise InvalidInput(f"attack words must be class names of {model.slug}: {unknown}")
    extra = {"photos": photos} if photos is not None else {}
    params = TypographicParams(model_id=model.id, dataset_id=dataset.id, words=chosen, **extra)
    return enqueue_job(
        session, params, queue="gpu", priority=priority, model_id=model.id, dataset_id=dataset.id
    )


def _plot(data: dict[str, Any]) -> dict[str, Any]:
    """SVG geometry of a conditional probability plot: one stacked bar per bucket."""
    shares, concepts = data.get("shares") or [], data.get("concepts") or []
    n = max(len(shares), 1)
    slot = PLOT_W / n
    bars = []
    for b, row in enumerate(shares):
        y = PLOT_TOP + PLOT_H
        segments = []
        for c, share in enumerate(row):
            if share <= 0:
                continue
            h = PLOT_H * share
            y -= h
            segments.append(
                {
                    "y": round(y, 2),
                    "h": round(h, 2),
                    "colour": PALETTE[c % len(PALETTE)],
                    "concept": concepts[c],
                    "share": share,
                }
            )
        bars.append(
            {
                "x": round(b * slot + 1, 2),
                "w": round(max(slot - 2, 1), 2),
                "segments": segments,
                "x_std": data["x_std"][b],
                "sampled": data["sampled"][b],
                "total": data["totals"][b],
                "lo": data["edges"][b],
                "hi": data["edges"][b + 1],
            }
        )
    present = {c for row in shares for c, s in enumerate(row) if s > 0}
    return {
        "bars": bars,
        "legend": [
            {"concept": name, "colour": PALETTE[c % len(PALETTE)]}
            for c, name in enumerate(concepts)
            if c in present
        ],
        "width": PLOT_W,
        "height": PLOT_TOP + PLOT_H + 20,
        "base": PLOT_TOP + PLOT_H,
    }


def condprob_view(
    store: ObjectStore, arts: dict[str, list[ArtifactOut]], plot: str | None = None
) -> dict[str, Any] | None:
    """The unit's conditional probability plot (the newest, or variant ``plot``) and the other
    concept lists it has plots for."""
    found = sorted(arts.get("condprob") or [], key=lambda a: a.created_at, reverse=True)
    if not found:
        return None
    art = next((a for a in found if a.variant == plot), found[0])
    data = read_json_dict(store, art)
    if data is None:
        return None
    others = [
        {"variant": a.variant, "concepts": (a.provenance.get("params") or {}).get("concepts")}
        for a in found
        if a is not art
    ]
    return {**data, **_plot(data), "url": art.url, "variant": art.variant, "others": others}


def unit_condprob(
    session: Session, store: ObjectStore, model: str, layer: str, unit: int
) -> dict[str, Any]:
    """A unit's newest conditional probability plot (JSON), 404 while it has none."""
    m, lyr, u = catalog.resolve_unit(session, model, layer, unit)
    arts = CatalogRepository(session).unit_artifacts(lyr.id, u.index)
    outs = [catalog.artifact_out(a) for a in arts if a.kind == "condprob"]
    view = condprob_view(store, {"condprob": outs})
    if view is None:
        raise NotFoundError("conditional probability plot", f"{m.slug}/{lyr.name}/{unit}")
    keep = ("concepts", "edges", "x_std", "totals", "sampled", "shares", "samples", "mean", "std")
    return {k: view[k] for k in keep} | {"url": view["url"]}


def typographic_summary(
    session: Session, store: ObjectStore, model: Model
) -> dict[str, Any] | None:
    """The model's typographic attack: success rate, and per word its rate and top units."""
    art = AnalysesRepository(session).model_artifact(model.id, "typographic", "summary")
    if art is None:
        return None
    data = read_json_dict(store, catalog.artifact_out(art))
    if data is None:
        return None
    for w in data.get("per_word", []):
        for u in w.get("units", []):
            u["url"] = f"{urls.unit_url(model.slug, u['layer'], u['unit'])}?view=text"
    return data


def typographic_unit(
    store: ObjectStore, arts: dict[str, list[ArtifactOut]], unit: int
) -> dict[str, Any] | None:
    """One unit's responses to the attack's photos, with each word, and to the word alone."""
    art = next((a for a in arts.get("typographic") or [] if a.variant == "units"), None)
    data = read_json_dict(store, art)
    if data is None or unit >= len(data.get("photo", [])):
        return None
    words = data["words"]
    rows = [
        {
            "word": w,
            "with_word": data["with_word"][i][unit],
            "word_alone": data["word_alone"][i][unit],
            "rise": data["rise"][i][unit],
        }
        for i, w in enumerate(words)
    ]
    return {"photo": data["photo"][unit], "rows": rows}
