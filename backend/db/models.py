"""The microscope's tables (SQLAlchemy 2 typed models). Alembic is the only way they change."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from backend.db.base import Base, BigIntId, JSONType, TimestampMixin
from contracts.jobs import JobState

# Artifact kinds: a documented, closed set of names (README "Artifacts").
ARTIFACT_KINDS = {
    "dataset_examples": "per-unit top/negative/quantile examples (JSON index)",
    "example_crop": "a crop around an example's receptive field (WebP)",
    "example_heatmap": "an example crop with the unit's activation overlaid (WebP)",
    "histogram": "per-unit activation histogram and statistics (JSON)",
    "featvis": "feature visualization, one variant per objective, or a facet's (WebP)",
    "text_fv": "text feature visualization: the unit's top strings (JSON)",
    "rendered_words": "the unit's top rendered words (JSON)",
    "weights_nmf": "NMF-RGB view of the unit's weights (PNG); per layer, its factors (JSON)",
    "weights_svd": "per layer: its units placed by an SVD of their weights (JSON)",
    "circuits": "per layer: each unit's strongest inputs and outputs in the next layers (JSON)",
    "weights_banding": "per layer: horizontal vs vertical structure of its NMF maps (JSON)",
    "weights_clusters": "per layer: k-means groups of its units' spatial weight shapes (JSON)",
    "weights_properties": "per layer: colour and frequency carried from first-layer weights (JSON)",
    "weights_branches": "per layer: branches read from the network (concatenations, groups) (JSON)",
    "weights_svd_pair": "first layer: its units placed by the SVD of the next layer's |W| (JSON)",
    "neuron_card": "a shareable JPEG card: feature vis, top examples, label",
    "search_index": "per-model unit text vectors and vocabulary embeddings (npz)",
    "facet_probe": "per-model facet probe: a linear probe on a lower layer (safetensors)",
    "thumbnail": "a dataset image thumbnail (JPEG)",
    "condprob": "per-unit conditional probability plot: concept shares per activation bucket",
    "typographic": "typographic attack: per model its summary, per layer unit responses (JSON)",
}

class Model(TimestampMixin, Base):
    __tablename__ = "models"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    slug: Mapped[str] = mapped_column(String(128), unique=True)
    spec: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(256))
    weights: Mapped[str | None] = mapped_column(Text)
    pretrained: Mapped[bool] = mapped_column(Boolean, default=False)
    weights_checksum: Mapped[str | None] = mapped_column(String(64))
    family: Mapped[str | None] = mapped_column(String(32))
    preprocessing: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    input_size: Mapped[int | None] = mapped_column(Integer)
    class_names: Mapped[list[str] | None] = mapped_column(JSONType)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    error: Mapped[str | None] = mapped_column(Text)

    layers: Mapped[list[Layer]] = relationship(
        back_populates="model", order_by="Layer.order", cascade="all, delete-orphan"
    )


class Layer(Base):
    __tablename__ = "layers"
    __table_args__ = (
        UniqueConstraint("model_id", "name"),
        Index("ix_layers_model_order", "model_id", "order"),
    )

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(256))
    module_path: Mapped[str] = mapped_column(String(256))
    kind: Mapped[str] = mapped_column(String(32))
    unit_count: Mapped[int] = mapped_column(Integer)
    output_shape: Mapped[list[int]] = mapped_column(JSONType)
    layout: Mapped[dict[str, Any]] = mapped_column(JSONType)
    order: Mapped[int] = mapped_column(Integer)
    is_default: Mapped[bool] = mapped_column(Boolean, default=True)
    # Parallel branches laid side by side on the unit axis (contracts.layout.Branch dicts).
    branches: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONType, nullable=True)

    model: Mapped[Model] = relationship(back_populates="layers")


class Unit(Base):
    __tablename__ = "units"
    __table_args__ = (
        UniqueConstraint("layer_id", "index"),
        Index("ix_units_label", "label"),
    )

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    layer_id: Mapped[int] = mapped_column(ForeignKey("layers.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column(Integer)
    label: Mapped[str | None] = mapped_column(String(256))
    label_source: Mapped[str | None] = mapped_column(String(32))  # auto | admin
    # auto: the first shown label's fidelity (Spearman on held-out images); admin: 1.0
    label_confidence: Mapped[float | None] = mapped_column(Float)
    # {"labels": [{text, kind, score, selection}], "guesses": [...], "threshold", "heldout"}:
    # the labels shown with their fidelity, the best candidates (shown when the unit
    # abstains) and the bar; written by the text views' labels step.
    label_scores: Mapped[dict[str, Any] | None] = mapped_column(JSONType)


class Dataset(TimestampMixin, Base):
    __tablename__ = "datasets"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    slug: Mapped[str] = mapped_column(String(128), unique=True)
    source: Mapped[str] = mapped_column(Text)
    image_count: Mapped[int] = mapped_column(Integer, default=0)
    skipped_count: Mapped[int] = mapped_column(Integer, default=0)
    skipped: Mapped[dict[str, int] | None] = mapped_column(JSONType)
    checksum: Mapped[str | None] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default="pending")
    error: Mapped[str | None] = mapped_column(Text)


class Image(Base):
    __tablename__ = "images"
    __table_args__ = (
        UniqueConstraint("dataset_id", "path"),
        Index("ix_images_dataset_position", "dataset_id", "position"),
    )

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    thumb_key: Mapped[str | None] = mapped_column(Text)


class Artifact(Base):
    __tablename__ = "artifacts"
    __table_args__ = (
        UniqueConstraint("model_id", "layer_id", "unit_index", "kind", "params_hash"),
        # The unit page's lookup: every artifact of one unit.
        Index("ix_artifacts_unit", "layer_id", "unit_index", "kind"),
    )

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    layer_id: Mapped[int | None] = mapped_column(ForeignKey("layers.id", ondelete="CASCADE"))
    unit_index: Mapped[int | None] = mapped_column(Integer)
    variant: Mapped[str] = mapped_column(String(64), default="")
    params_hash: Mapped[str] = mapped_column(String(64))
    storage_key: Mapped[str] = mapped_column(Text)
    content_type: Mapped[str] = mapped_column(String(64))
    meta: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    provenance: Mapped[dict[str, Any]] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Job(TimestampMixin, Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_state_created", "state", "created_at"),
        Index("ix_jobs_model", "model_id"),
        Index("ix_jobs_state_lease", "state", "lease_expires_at"),
    )

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    kind: Mapped[str] = mapped_column(String(64))
    # kind + canonical params hash: enqueuing the same work twice returns the same job.
    dedupe_key: Mapped[str] = mapped_column(String(128), unique=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSONType)
    queue: Mapped[str] = mapped_column(String(16), default="cpu")
    priority: Mapped[int] = mapped_column(Integer, default=5)
    state: Mapped[str] = mapped_column(String(16), default=JobState.QUEUED.value)
    progress_done: Mapped[int] = mapped_column(Integer, default=0)
    progress_total: Mapped[int] = mapped_column(Integer, default=0)
    message: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    dataset_id: Mapped[int | None] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # A running job's lease, renewed by its worker's heartbeat (workers/tasks/lease.py); the
    # reconciler re-queues the job once it expires (backend/jobs/reconcile.py).
    worker: Mapped[str | None] = mapped_column(String(128))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # When a message for the job was last sent: a queued job not sent for a while is sent again.
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # When the job first found its inputs not ready; waiting past JOB_WAIT_HOURS fails it.
    waiting_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Family(TimestampMixin, Base):
    __tablename__ = "families"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    slug: Mapped[str] = mapped_column(String(128), unique=True)
    name: Mapped[str] = mapped_column(String(256))
    description: Mapped[str | None] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(16), default="manual")  # manual | auto

    members: Mapped[list[FamilyMember]] = relationship(
        back_populates="family", order_by="FamilyMember.position", cascade="all, delete-orphan"
    )


class FamilyMember(Base):
    __tablename__ = "family_members"
    __table_args__ = (Index("ix_family_members_unit", "unit_id"),)

    family_id: Mapped[int] = mapped_column(
        ForeignKey("families.id", ondelete="CASCADE"), primary_key=True
    )
    unit_id: Mapped[int] = mapped_column(
        ForeignKey("units.id", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(Integer, default=0)
    note: Mapped[str | None] = mapped_column(Text)

    family: Mapped[Family] = relationship(back_populates="members")


class CatalogVersion(Base):
    """One row whose value rises with every commit that changes what pages show.

    The web process's page cache (backend/pagecache.py) compares it to decide whether a
    cached page is still current; backend/db/session.py bumps it in the committing
    transaction itself, so a reader that sees the new value also sees the new data.
    """

    __tablename__ = "catalog_version"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    value: Mapped[int] = mapped_column(BigIntId, default=0)
