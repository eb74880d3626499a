"""Families of units (hand-curated or proposed), unit labels, label and text search, and
text concepts composed from units."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from backend import urls
from backend.catalog import service as catalog
from backend.catalog.labels import label_score
from backend.db.models import Artifact, Family, FamilyMember, Layer, Model, Unit
from backend.errors import InvalidInput, NotFoundError, NotReady
from backend.storage import NotFound, ObjectStore
from backend.textsearch import TextIndex, load_index
from contracts.jobs import CHANNEL_VARIANTS
from contracts.spec import slugify


class MemberRef(BaseModel):
    model: str
    layer: str
    unit: int = Field(ge=0)
    note: str | None = None


class FamilyCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    description: str | None = None
    members: list[MemberRef] = []


class FamilyUpdate(BaseModel):
    name: str | None = Field(None, min_length=1, max_length=200)
    description: str | None = Field(None, description="an empty string clears it")


class LabelUpdate(BaseModel):
    label: str | None = Field(None, max_length=200)


class Card(BaseModel):
    """A neuron card: enough to draw a unit in a grid of cards."""

    model: str
    layer: str
    unit: int
    label: str | None
    label_score: float | None = Field(None, description="the label's fidelity (None: unscored)")
    note: str | None = None
    url: str
    thumbnail: str | None
    score: float | None = None


class Term(Card):
    """A unit in a composition, with its weight."""

    weight: float


class CompositionOut(BaseModel):
    """``query ≈ sum(weight × unit text vector)`` over ``terms``."""

    query: str
    model: str | None
    layer: str | None
    used: list[str] = Field(description="vocabulary entries the query's vector was made from")
    cosine: float | None = Field(description="cosine between the weighted sum and the query")
    terms: list[Term]


class FamilyOut(BaseModel):
    slug: str
    name: str
    description: str | None
    source: str
    size: int
    url: str
    api_url: str
    members: list[Card] | None = None


def _resolve(session: Session, ref: MemberRef) -> tuple[Model, Layer, Unit]:
    model = catalog.get_model(session, ref.model)
    layer = catalog.get_layer(session, model, ref.layer)
    return model, layer, catalog.get_unit(session, layer, ref.unit)


def _thumbs(session: Session, pairs: Sequence[tuple[int, int]]) -> dict[tuple[int, int], str]:
    if not pairs:
        return {}
    layer_ids = {lid for lid, _ in pairs}
    rows = session.execute(
        select(
            Artifact.layer_id,
            Artifact.unit_index,
            Artifact.kind,
            Artifact.variant,
            Artifact.storage_key,
        ).where(
            Artifact.layer_id.in_(layer_ids),
            Artifact.unit_index.in_({u for _, u in pairs}),
            ((Artifact.kind == "featvis") & Artifact.variant.in_(CHANNEL_VARIANTS))
            | ((Artifact.kind == "example_crop") & (Artifact.variant == "thumb")),
        )
    ).all()
    out: dict[tuple[int, int], str] = {}
    # A feature visualization first, the default render before the others.
    def rank(row: Any) -> tuple[bool, int]:
        order = CHANNEL_VARIANTS.index(row[3]) if row[3] in CHANNEL_VARIANTS else 9
        return row[2] != "featvis", order

    for lid, u, _kind, _variant, key in sorted(rows, key=rank):
        if lid is not None and u is not None:
            out.setdefault((lid, u), urls.object_url(key))
    return out


def cards(session: Session, rows: Sequence[tuple[Model, Layer, Unit, str | None]]) -> list[Card]:
    thumbs = _thumbs(session, [(layer.id, unit.index) for _, layer, unit, _ in rows])
    return [
        Card(
            model=m.slug,
            layer=layer.name,
            unit=unit.index,
            label=unit.label,
            label_score=label_score(unit),
            note=note,
            url=urls.unit_url(m.slug, layer.name, unit.index),
            thumbnail=thumbs.get((layer.id, unit.index)),
        )
        for m, layer, unit, note in rows
    ]


def family_out(session: Session, fam: Family, *, with_members: bool = False) -> FamilyOut:
    out = FamilyOut(
        slug=fam.slug,
        name=fam.name,
        description=fam.description,
        source=fam.source,
        size=len(fam.members),
        url=f"/families/{fam.slug}",
        api_url=f"{urls.API}/families/{fam.slug}",
    )
    if with_members:
        rows = session.execute(
            select(Model, Layer, Unit, FamilyMember.note)
            .join(Unit, Unit.id == FamilyMember.unit_id)
            .join(Layer, Layer.id == Unit.layer_id)
            .join(Model, Model.id == Layer.model_id)
            .where(FamilyMember.family_id == fam.id)
            .order_by(FamilyMember.position)
        ).all()
        out.members = cards(session, [tuple(r) for r in rows])  # type: ignore[misc]
    return out


def list_families(session: Session) -> list[FamilyOut]:
    fams = session.scalars(select(Family).order_by(Family.name)).all()
    return [family_out(session, f) for f in fams]


def get_family(session: Session, slug: str) -> Family:
    fam = session.scalar(select(Family).where(Family.slug == slug))
    if fam is None:
        raise NotFoundError("family", slug)
    return fam


def create_family(session: Session, body: FamilyCreate, source: str = "manual") -> Family:
    slug = slugify(body.name)
    if not slug:
        raise InvalidInput("a family needs a name with letters or digits")
    if session.scalar(select(Family.id).where(Family.slug == slug)) is not None:
        raise InvalidInput(f"family {slug!r} already exists")
    fam = Family(slug=slug, name=body.name, description=body.description, source=source)
    session.add(fam)
    session.flush()
    for ref in body.members:
        add_member(session, fam, ref)
    return fam


def update_family(session: Session, fam: Family, body: FamilyUpdate) -> Family:
    """Rename a family or change its description; the slug (its permalink) stays."""
    if body.name is not None:
        name = body.name.strip()
        if not slugify(name):
            raise InvalidInput("a family needs a name with letters or digits")
        fam.name = name
    if body.description is not None:
        fam.description = body.description.strip() or None
    session.flush()
    return fam


def add_member(session: Session, fam: Family, ref: MemberRef) -> None:
    _, _, unit = _resolve(session, ref)
    exists = session.get(FamilyMember, (fam.id, unit.id))
    if exists is not None:
        exists.note = ref.note
        return
    position = session.scalar(
        select(func.coalesce(func.max(FamilyMember.position), -1) + 1).where(
            FamilyMember.family_id == fam.id
        )
    )
    session.add(FamilyMember(family_id=fam.id, unit_id=unit.id, position=position, note=ref.note))
    session.flush()
    session.refresh(fam)


def remove_member(session: Session, fam: Family, ref: MemberRef) -> None:
    _, _, unit = _resolve(session, ref)
    session.execute(
        delete(FamilyMember).where(
            FamilyMember.family_id == fam.id, FamilyMember.unit_id == unit.id
        )
    )
    session.flush()
    session.refresh(fam)


def unit_families(session: Session, unit: Unit) -> list[dict[str, Any]]:
    rows = session.execute(
        select(Family.slug, Family.name)
        .join(FamilyMember, FamilyMember.family_id == Family.id)
        .where(FamilyMember.unit_id == unit.id)
        .order_by(Family.name)
    ).all()
    return [{"slug": s, "name": n, "url": f"/families/{s}"} for s, n in rows]


def set_label(session: Session, model: str, layer: str, index: int, label: str | None) -> Unit:
    m = catalog.get_model(session, model)
    lyr = catalog.get_layer(session, m, layer)
    unit = catalog.get_unit(session, lyr, index)
    unit.label = label.strip() if label and label.strip() else None
    unit.label_source = "admin" if unit.label else None
    unit.label_confidence = 1.0 if unit.label else None
    # The scores were the earlier labels': this one is scored at the next labels run.
    unit.label_scores = {**(unit.label_scores or {}), "labels": []}
    session.flush()
    return unit


def search_labels(
    session: Session, q: str, *, model: str | None = None, limit: int = 60
) -> list[Card]:
    """Units whose label contains ``q`` (case-insensitive)."""
    q = q.strip()
    if not q:
        return []
    stmt = (
        select(Model, Layer, Unit)
        .join(Layer, Layer.id == Unit.layer_id)
        .join(Model, Model.id == Layer.model_id)
        .where(func.lower(Unit.label).contains(q.lower()))
    )
    if model:
        stmt = stmt.where(Model.slug == model)
    rows = session.execute(stmt.order_by(Unit.label_confidence.desc(), Unit.id).limit(limit)).all()
    return cards(session, [(m, layer, u, None) for m, layer, u in rows])


def _indexes(session: Session, model: str | None) -> list[tuple[Model, str]]:
    """(model, storage key) of each model's search index, or ``model``'s only."""
    stmt = (
        select(Model, Artifact.storage_key)
        .join(Artifact, Artifact.model_id == Model.id)
        .where(Artifact.kind == "search_index", Artifact.layer_id.is_(None))
        .order_by(Model.slug)
    )
    if model:
        stmt = stmt.where(Model.slug == model)
    return [(m, key) for m, key in session.execute(stmt).all()]


def _unit_cards(session: Session, found: Sequence[tuple[Model, str, int]]) -> list[Card | None]:
    """Cards for (model, layer name, unit index) triples; None where the unit is gone."""
    rows: list[tuple[Model, Layer, Unit, str | None]] = []
    at: list[int] = []
    for i, (m, layer_name, index_) in enumerate(found):
        layer = session.scalar(
            select(Layer).where(Layer.model_id == m.id, Layer.name == layer_name)
        )
        if layer is None:
            continue
        unit = session.scalar(select(Unit).where(Unit.layer_id == layer.id, Unit.index == index_))
        if unit is not None:
            rows.append((m, layer, unit, None))
            at.append(i)
    out: list[Card | None] = [None] * len(found)
    for i, card in zip(at, cards(session, rows), strict=True):
        out[i] = card
    return out


def search_text(
    session: Session, store: ObjectStore, q: str, *, model: str | None = None, top: int = 30
) -> tuple[list[Card], list[str]]:
    """Zero-shot neuron search: units whose text vector is closest to the query's."""
    found: list[tuple[float, Model, str, int]] = []
    used: list[str] = []
    for m, key in _indexes(session, model):
        try:
            index = load_index(store, key)
        except NotFound:
            continue
        hits, terms = index.search(q, top=top)
        used = used or terms
        found += [(h.score, m, h.layer, h.unit) for h in hits]
    found.sort(key=lambda t: -t[0])
    found = found[:top]
    out: list[Card] = []
    for (score, *_), card in zip(found, _unit_cards(session, [f[1:] for f in found]), strict=True):
        if card is not None:
            card.score = round(score, 4)
            out.append(card)
    return out, used


def compose_text(
    session: Session,
    store: ObjectStore,
    q: str,
    *,
    model: str | None = None,
    layer: str | None = None,
) -> CompositionOut:
    """A text concept as a sparse non-negative combination of units (L1 regression of the
    query's vector on unit text vectors): ``model``'s units, else those of the model whose
    combination fits best; only ``layer``'s units when given."""
    q = q.strip()
    if not q:
        raise InvalidInput("the query is empty")
    if model is not None:
        m = catalog.get_model(session, model)
        if layer is not None:
            catalog.get_layer(session, m, layer)
    indexes: list[tuple[Model, TextIndex]] = []
    for m, key in _indexes(session, model):
        try:
            indexes.append((m, load_index(store, key)))
        except NotFound:
            continue
    if layer is not None:
        indexes = [(m, ix) for m, ix in indexes if layer in ix.layers]
    if not indexes:
        where = f" covering layer {layer!r}" if layer else ""
        if model:
            raise NotReady(f"model {model!r} has no search index{where} yet: run its text views")
        raise NotReady(f"no model has a search index{where} yet: compute the text views first")
    best = None
    for m, ix in indexes:
        comp = ix.compose(q, layer)
        if comp is not None and (best is None or comp.cosine > best[1].cosine):
            best = (m, comp)
    out = CompositionOut(query=q, model=model, layer=layer, used=[], cosine=None, terms=[])
    if best is None:  # none of the query's words is in the vocabulary
        return out
    m, comp = best
    found = [(m, t.layer, t.unit) for t in comp.terms]
    for t, card in zip(comp.terms, _unit_cards(session, found), strict=True):
        if card is not None:
            out.terms.append(Term(**card.model_dump(), weight=round(t.weight, 4)))
    out.model, out.used, out.cosine = m.slug, comp.used, round(comp.cosine, 4)
    return out
