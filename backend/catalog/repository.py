"""Queries on models, layers, units and artifacts (every lookup a page makes is indexed)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any, Protocol, cast

from sqlalchemy import and_, bindparam, func, or_, select, union_all
from sqlalchemy.orm import Session

from backend.db.models import Artifact, Layer, Model, Unit
from backend.limits import storable_index

# The unit page's and unit JSON's statements, built once: building a select() costs the hot
# path more Python than running it (benchmarks/server.py's profile).
_FIND_UNIT = (
    select(Model, Layer, Unit)
    .join(Layer, Layer.model_id == Model.id)
    .join(Unit, Unit.layer_id == Layer.id)
    .where(
        Model.slug == bindparam("slug"),
        Layer.name == bindparam("layer"),
        Unit.index == bindparam("index"),
    )
)
# A UNION ALL: with an OR, SQLite scans the whole layer's artifacts instead of seeking
# ix_artifacts_unit twice. Table rows, not ORM objects: a fifth of the unit JSON's handler
# went to building Artifact instances that are only read once.
_ARTIFACTS = Artifact.__table__
_UNIT_AND_LAYER_ARTIFACTS = union_all(
    select(_ARTIFACTS).where(
        _ARTIFACTS.c.layer_id == bindparam("layer_id"),
        _ARTIFACTS.c.unit_index == bindparam("index"),
    ),
    select(_ARTIFACTS).where(
        _ARTIFACTS.c.layer_id == bindparam("layer_id"),
        _ARTIFACTS.c.unit_index.is_(None),
        _ARTIFACTS.c.kind.in_(bindparam("kinds", expanding=True)),
    ),
)


class ArtifactRow(Protocol):
    """What a page reads of an artifact: an Artifact, or a row of its table."""

    kind: str
    variant: str
    unit_index: int | None
    storage_key: str
    content_type: str
    meta: dict[str, Any] | None
    provenance: dict[str, Any]
    created_at: datetime


# (kind, variant) of the images that stand for a unit in a card or a preview, best first: its
# feature visualization, else its top dataset example.
THUMBNAILS = (
    ("featvis", "channel_top16"),
    ("featvis", "channel"),
    ("example_crop", "thumb"),
)


class CatalogRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    # models
    def list_models(self) -> Sequence[Model]:
        return self.session.scalars(select(Model).order_by(Model.id)).all()

    def get_model(self, slug: str) -> Model | None:
        return self.session.scalar(select(Model).where(Model.slug == slug))

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
        keys = self.unit_thumbnail_keys({(layer_id, u) for u in range(n)})
        return [keys[layer_id, u] for u in range(n) if (layer_id, u) in keys]

    # units
    def list_units(self, layer_id: int, *, offset: int, limit: int) -> Sequence[Unit]:
        return self.session.scalars(
            select(Unit)
            .where(Unit.layer_id == layer_id, Unit.index >= offset)
            .order_by(Unit.index)
            .limit(limit)
        ).all()

    def get_unit(self, layer_id: int, index: int) -> Unit | None:
        if not storable_index(index):
            return None
        return self.session.scalar(
            select(Unit).where(Unit.layer_id == layer_id, Unit.index == index)
        )

    def units_by_label(
        self, text: str, *, model_slug: str | None = None, limit: int = 60
    ) -> list[tuple[Model, Layer, Unit]]:
        """Units whose label contains ``text`` (case-insensitive), most confident first."""
        q = (
            select(Model, Layer, Unit)
            .join(Layer, Layer.id == Unit.layer_id)
            .join(Model, Model.id == Layer.model_id)
            .where(func.lower(Unit.label).contains(text.lower()))
        )
        if model_slug:
            q = q.where(Model.slug == model_slug)
        rows = self.session.execute(q.order_by(Unit.label_confidence.desc(), Unit.id).limit(limit))
        return [(m, layer, u) for m, layer, u in rows.all()]

    # artifacts
    def find_unit(
        self, model_slug: str, layer_name: str, index: int
    ) -> tuple[Model, Layer, Unit] | None:
        """A unit with its layer and model by its permalink's parts, in one round trip (the
        unit page's and unit JSON's first step; None when any part is unknown)."""
        if not storable_index(index):
            return None
        args = {"slug": model_slug, "layer": layer_name, "index": index}
        row = self.session.execute(_FIND_UNIT, args).first()
        return None if row is None else (row[0], row[1], row[2])

    def unit_and_layer_artifacts(
        self, layer_id: int, index: int, layer_kinds: Sequence[str]
    ) -> list[ArtifactRow]:
        """A unit's artifacts, then those of its layer of ``layer_kinds``: the rows and order of
        unit_artifacts + layer_artifacts in one round trip."""
        args = {"layer_id": layer_id, "index": index, "kinds": list(layer_kinds)}
        rows = cast(list[ArtifactRow], self.session.execute(_UNIT_AND_LAYER_ARTIFACTS, args).all())
        return sorted(rows, key=lambda a: (a.unit_index is None, a.kind, a.variant))

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

    def unit_thumbnail_keys(self, pairs: Collection[tuple[int, int]]) -> dict[tuple[int, int], str]:
        """(layer id, unit index) -> storage key of the unit's best THUMBNAILS image, for
        units of any layers."""
        if not pairs:
            return {}
        rows = self.session.execute(
            select(
                Artifact.layer_id,
                Artifact.unit_index,
                Artifact.kind,
                Artifact.variant,
                Artifact.storage_key,
            ).where(
                Artifact.layer_id.in_({lid for lid, _ in pairs}),
                Artifact.unit_index.in_({u for _, u in pairs}),
                or_(*(and_(Artifact.kind == k, Artifact.variant == v) for k, v in THUMBNAILS)),
            )
        ).all()
        out: dict[tuple[int, int], str] = {}
        for lid, u, _kind, _variant, key in sorted(
            rows, key=lambda r: THUMBNAILS.index((r.kind, r.variant))
        ):
            if lid is not None and u is not None and (lid, u) in pairs:
                out.setdefault((lid, u), key)
        return out

    def search_index_keys(self, model_slug: str | None = None) -> list[tuple[Model, str]]:
        """(model, storage key) of each model's search index, or only ``model_slug``'s."""
        q = (
            select(Model, Artifact.storage_key)
            .join(Artifact, Artifact.model_id == Model.id)
            .where(Artifact.kind == "search_index", Artifact.layer_id.is_(None))
            .order_by(Model.slug)
        )
        if model_slug:
            q = q.where(Model.slug == model_slug)
        return [(m, key) for m, key in self.session.execute(q).all()]
