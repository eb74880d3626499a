"""Families of units (hand-curated or proposed) and the neuron cards that show their members."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from backend import urls
from backend.catalog.labels import label_score
from backend.catalog.repository import CatalogRepository
from backend.catalog.service import resolve_unit
from backend.db.models import Family, Layer, Model, Unit
from backend.errors import InvalidInput, NotFoundError
from backend.families.repository import FamilyRepository
from backend.families.schemas import Card, FamilyCreate, FamilyOut, FamilyUpdate, MemberRef
from contracts.spec import slugify


def cards(session: Session, rows: Sequence[tuple[Model, Layer, Unit, str | None]]) -> list[Card]:
    """Neuron cards for (model, layer, unit, note) rows, each with its unit's thumbnail."""
    thumbs = CatalogRepository(session).unit_thumbnail_keys(
        {(layer.id, unit.index) for _, layer, unit, _ in rows}
    )
    out = []
    for m, layer, unit, note in rows:
        key = thumbs.get((layer.id, unit.index))
        out.append(
            Card(
                model=m.slug,
                layer=layer.name,
                unit=unit.index,
                label=unit.label,
                label_score=label_score(unit),
                note=note,
                url=urls.unit_url(m.slug, layer.name, unit.index),
                thumbnail=urls.object_url(key) if key else None,
            )
        )
    return out


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
        out.members = cards(session, FamilyRepository(session).members(fam.id))
    return out


def list_families(session: Session) -> list[FamilyOut]:
    return [family_out(session, f) for f in FamilyRepository(session).list_families()]


def get_family(session: Session, slug: str) -> Family:
    fam = FamilyRepository(session).get(slug)
    if fam is None:
        raise NotFoundError("family", slug)
    return fam


def create_family(session: Session, body: FamilyCreate, source: str = "manual") -> Family:
    slug = slugify(body.name)
    if not slug:
        raise InvalidInput("a family needs a name with letters or digits")
    repo = FamilyRepository(session)
    if repo.get(slug) is not None:
        raise InvalidInput(f"family {slug!r} already exists")
    fam = repo.add(Family(slug=slug, name=body.name, description=body.description, source=source))
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
    """Add a unit to a family (again: only its note changes)."""
    _, _, unit = resolve_unit(session, ref.model, ref.layer, ref.unit)
    repo = FamilyRepository(session)
    exists = repo.get_member(fam.id, unit.id)
    if exists is not None:
        exists.note = ref.note
        return
    repo.add_member(fam.id, unit.id, ref.note)
    session.refresh(fam)  # its members list (and size) now include the unit


def remove_member(session: Session, fam: Family, ref: MemberRef) -> None:
    _, _, unit = resolve_unit(session, ref.model, ref.layer, ref.unit)
    FamilyRepository(session).remove_member(fam.id, unit.id)
    session.refresh(fam)


def unit_families(session: Session, unit: Unit) -> list[dict[str, Any]]:
    """The families a unit belongs to, with their pages' URLs."""
    rows = FamilyRepository(session).of_unit(unit.id)
    return [{"slug": s, "name": n, "url": f"/families/{s}"} for s, n in rows]
