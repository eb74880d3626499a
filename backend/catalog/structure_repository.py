"""Queries the weight-structure views make: unit sets by label and family, and thumbnails."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.db.models import Artifact, Family, FamilyMember, Unit

# Thumbnails of linked units, best first: feature vis, top example, the weights' NMF image.
THUMB_KINDS = (("featvis", "channel"), ("example_crop", "thumb"), ("weights_nmf", "rgb"))


class StructureRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def labelled(self, layer_id: int, word: str) -> list[tuple[int, str]]:
        """(index, label) of the layer's units whose label contains ``word`` (any case)."""
        rows = self.session.execute(
            select(Unit.index, Unit.label).where(
                Unit.layer_id == layer_id, Unit.label.ilike(f"%{word}%")
            )
        ).all()
        return [(i, label) for i, label in rows if label is not None]

    def family_slugs(self) -> list[str]:
        """Every family's slug, for the form's choice (read from the table: the catalog
        never imports the families package, which is built on it)."""
        return list(self.session.scalars(select(Family.slug).order_by(Family.slug)))

    def family_units(self, layer_id: int, slug: str) -> list[int] | None:
        """Indices of a family's members in this layer; None when there is no such family."""
        fam = self.session.scalar(select(Family.id).where(Family.slug == slug))
        if fam is None:
            return None
        return list(
            self.session.scalars(
                select(Unit.index)
                .join(FamilyMember, FamilyMember.unit_id == Unit.id)
                .where(FamilyMember.family_id == fam, Unit.layer_id == layer_id)
                .order_by(Unit.index)
            )
        )

    def thumbnails(self, layer_id: int, indices: Sequence[int]) -> dict[int, str]:
        """unit index -> storage key of its best thumbnail (THUMB_KINDS order)."""
        if not indices:
            return {}
        cols = (Artifact.unit_index, Artifact.kind, Artifact.variant, Artifact.storage_key)
        rows = self.session.execute(
            select(*cols).where(
                Artifact.layer_id == layer_id,
                Artifact.unit_index.in_(list(indices)),
                Artifact.kind.in_([k for k, _ in THUMB_KINDS]),
            )
        ).all()
        rank = {kv: i for i, kv in enumerate(THUMB_KINDS)}
        best: dict[int, tuple[int, str]] = {}
        for u, kind, variant, key in rows:
            r = rank.get((kind, variant))
            if u is not None and r is not None and (u not in best or r < best[u][0]):
                best[u] = (r, key)
        return {u: key for u, (_, key) in best.items()}
