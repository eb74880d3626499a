"""Queries on families and their members (units are looked up through the catalog's)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import bindparam, delete, func, select
from sqlalchemy.orm import Session

from backend.db.models import Family, FamilyMember, Layer, Model, Unit

# Every unit page runs this: built once (building a select costs more than running it).
_OF_UNIT = (
    select(Family.slug, Family.name)
    .join(FamilyMember, FamilyMember.family_id == Family.id)
    .where(FamilyMember.unit_id == bindparam("unit_id"))
    .order_by(Family.name)
)


class FamilyRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def list_families(self) -> Sequence[Family]:
        return self.session.scalars(select(Family).order_by(Family.name)).all()

    def get(self, slug: str) -> Family | None:
        return self.session.scalar(select(Family).where(Family.slug == slug))

    def add(self, family: Family) -> Family:
        self.session.add(family)
        self.session.flush()
        return family

    def members(self, family_id: int) -> list[tuple[Model, Layer, Unit, str | None]]:
        """(model, layer, unit, note) of each member, in the order they were added."""
        rows = self.session.execute(
            select(Model, Layer, Unit, FamilyMember.note)
            .join(Unit, Unit.id == FamilyMember.unit_id)
            .join(Layer, Layer.id == Unit.layer_id)
            .join(Model, Model.id == Layer.model_id)
            .where(FamilyMember.family_id == family_id)
            .order_by(FamilyMember.position)
        ).all()
        return [(m, layer, unit, note) for m, layer, unit, note in rows]

    def get_member(self, family_id: int, unit_id: int) -> FamilyMember | None:
        return self.session.get(FamilyMember, (family_id, unit_id))

    def add_member(self, family_id: int, unit_id: int, note: str | None) -> FamilyMember:
        """Append a unit after the family's last member."""
        position = self.session.scalar(
            select(func.coalesce(func.max(FamilyMember.position), -1) + 1).where(
                FamilyMember.family_id == family_id
            )
        )
        member = FamilyMember(family_id=family_id, unit_id=unit_id, position=position, note=note)
        self.session.add(member)
        self.session.flush()
        return member

    def remove_member(self, family_id: int, unit_id: int) -> None:
        self.session.execute(
            delete(FamilyMember).where(
                FamilyMember.family_id == family_id, FamilyMember.unit_id == unit_id
            )
        )
        self.session.flush()

    def of_unit(self, unit_id: int) -> list[tuple[str, str]]:
        """(slug, name) of the families a unit belongs to, by name."""
        rows = self.session.execute(_OF_UNIT, {"unit_id": unit_id}).all()
        return [(slug, name) for slug, name in rows]
