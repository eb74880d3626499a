"""Queries for analyses: which dataset a model was mined on, and model-wide artifacts."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.db.models import Artifact, Dataset, Job
from contracts.jobs import JobState


class AnalysesRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def mined_dataset(self, model_id: int) -> Dataset | None:
        """The dataset of the model's latest successful mining job."""
        return self.session.scalar(
            select(Dataset)
            .join(Job, Job.dataset_id == Dataset.id)
            .where(
                Job.model_id == model_id,
                Job.kind == "mine_examples",
                Job.state == JobState.SUCCEEDED,
            )
            .order_by(Job.finished_at.desc(), Job.id.desc())
            .limit(1)
        )

    def model_artifact(self, model_id: int, kind: str, variant: str) -> Artifact | None:
        """The newest model-wide artifact (no layer) of a kind and variant."""
        return self.session.scalar(
            select(Artifact)
            .where(
                Artifact.model_id == model_id,
                Artifact.layer_id.is_(None),
                Artifact.kind == kind,
                Artifact.variant == variant,
            )
            .order_by(Artifact.created_at.desc(), Artifact.id.desc())
            .limit(1)
        )
