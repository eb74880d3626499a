"""Queries on models, layers, units and artifacts (every lookup a page makes is indexed)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend.db.models import Artifact, Layer, Model, Unit
from contracts.jobs import CHANNEL_VARIANTS


class CatalogRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    # models
    def list_models(self) -> Sequence[Model]:
        return self.session.scalars(select(Model).order_by(Model.id)).all()

    def get_model(self, slug: str) -> Model | None:
        return self.session.scalar(select(Model).where(Model.slug == slug))

    def get_model_by_id(self, model_id: int) -> Model | None:
        return self.session.get(Model, model_id)

    def add(self, obj: object) -> None:
        self.session.add(obj)
        self.session.flush()

    # layers
    def list_layers(self, model_id: int, *, only_default: bool = False) -> Sequence[Layer]:
        q = select(Layer).where(Layer.model_id == model_id)
        if only_default:
            q = q.where(Layer.is_default.is_(True))
        return self.session.scalars(q.order_by(Layer.order)).all()

    def get_layer(self, model_id: int, name: str) -> Layer | None:
        return self.session.scalar(
            select(Layer).where(Layer.model_id == model_id, Layer.name == name)
        )

    def unit_totals(self, model_ids: Sequence[int]) -> dict[int, tuple[int, int]]:
        """model id -> (default layers, units in default layers)."""
        rows = self.session.execute(
            select(Layer.model_id, func.count(Layer.id), func.sum(Layer.unit_count))
            .where(Layer.model_id.in_(model_ids), Layer.is_default.is_(True))
            .group_by(Layer.model_id)
        ).all()
        return {mid: (int(n), int(u or 0)) for mid, n, u in rows}

    def preview_keys(self, model_id: int, n: int = 6) -> list[str]:
        """Thumbnails of the first units of the model's deepest default layer."""
        layer_id = self.session.scalar(
            select(Layer.id)
            .where(Layer.model_id == model_id, Layer.is_default.is_(True))
            .order_by(Layer.order.desc())
            .limit(1)
        )
        if layer_id is None:
            return []
        rows = self.session.execute(
            select(Artifact.unit_index, Artifact.kind, Artifact.storage_key)
            .where(
                Artifact.layer_id == layer_id,
                Artifact.unit_index < n,
                ((Artifact.kind == "featvis") & Artifact.variant.in_(CHANNEL_VARIANTS))
                | ((Artifact.kind == "example_crop") & (Artifact.variant == "thumb")),
            )
            .order_by(Artifact.unit_index)
        ).all()
        best: dict[int, str] = {}
        for u, kind, key in rows:
            if u is None:
                continue
            if u not in best or kind == "featvis":
                best[u] = key
        return [best[u] for u in sorted(best)]

    # units
    def list_units(self, layer_id: int, *, offset: int, limit: int) -> Sequence[Unit]:
        return self.session.scalars(
            select(Unit)
            .where(Unit.layer_id == layer_id, Unit.index >= offset)
            .order_by(Unit.index)
            .limit(limit)
        ).all()

    def get_unit(self, layer_id: int, index: int) -> Unit | None:
        return self.session.scalar(
            select(Unit).where(Unit.layer_id == layer_id, Unit.index == index)
        )

    # artifacts
    def unit_artifacts(self, layer_id: int, index: int) -> Sequence[Artifact]:
        return self.session.scalars(
            select(Artifact)
            .where(Artifact.layer_id == layer_id, Artifact.unit_index == index)
            .order_by(Artifact.kind, Artifact.variant)
        ).all()

    def layer_artifacts(self, layer_id: int, kinds: Sequence[str]) -> Sequence[Artifact]:
        """Artifacts of a whole layer (no unit), e.g. its weight views' SVD placement."""
        return self.session.scalars(
            select(Artifact)
            .where(
                Artifact.layer_id == layer_id,
                Artifact.unit_index.is_(None),
                Artifact.kind.in_(kinds),
            )
            .order_by(Artifact.kind, Artifact.variant)
        ).all()

    def facet_probes(self, model_id: int, name: str | None = None) -> Sequence[Artifact]:
        """The model's trained facet probes (one per name), by name."""
        q = select(Artifact).where(
            Artifact.model_id == model_id,
            Artifact.kind == "facet_probe",
            Artifact.layer_id.is_(None),
        )
        if name is not None:
            q = q.where(Artifact.variant == name)
        return self.session.scalars(q.order_by(Artifact.variant)).all()

    def layer_thumbnail_keys(
        self, layer_id: int, kind: str, variant: str, indices: Sequence[int]
    ) -> dict[int, str]:
        """unit index -> storage key of one artifact variant, for a page of the grid.

        Two columns, not ORM rows: loading whole artifacts (provenance JSON and all) was half
        of the grid page's time (measured).
        """
        rows = self.session.execute(
            select(Artifact.unit_index, Artifact.storage_key).where(
                Artifact.layer_id == layer_id,
                Artifact.kind == kind,
                Artifact.variant == variant,
                Artifact.unit_index.in_(indices),
            )
        ).all()
        return {u: key for u, key in rows if u is not None}
