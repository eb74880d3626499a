"""Finding units: by label, by text (zero-shot, through each model's search index), and text
concepts composed from units."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.orm import Session

from backend.catalog import service as catalog
from backend.catalog.repository import CatalogRepository
from backend.db.models import Layer, Model, Unit
from backend.errors import InvalidInput, NotReady
from backend.families.schemas import Card, CompositionOut, Term
from backend.families.service import cards
from backend.storage import NotFound, ObjectStore
from backend.textsearch import TextIndex, load_index


def search_labels(
    session: Session, q: str, *, model: str | None = None, limit: int = 60
) -> list[Card]:
    """Units whose label contains ``q`` (case-insensitive)."""
    q = q.strip()
    if not q:
        return []
    rows = CatalogRepository(session).units_by_label(q, model_slug=model, limit=limit)
    return cards(session, [(m, layer, u, None) for m, layer, u in rows])


def _unit_cards(session: Session, found: Sequence[tuple[Model, str, int]]) -> list[Card | None]:
    """Cards for (model, layer name, unit index) triples; None where the unit is gone."""
    repo = CatalogRepository(session)
    rows: list[tuple[Model, Layer, Unit, str | None]] = []
    at: list[int] = []
    for i, (m, layer_name, index_) in enumerate(found):
        layer = repo.get_layer(m.id, layer_name)
        if layer is None:
            continue
        unit = repo.get_unit(layer.id, index_)
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
    for m, key in CatalogRepository(session).search_index_keys(model):
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
    for m, key in CatalogRepository(session).search_index_keys(model):
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
