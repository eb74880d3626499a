"""Queue every precompute job that exists for a (model, dataset) pair."""

from __future__ import annotations

from sqlalchemy.orm import Session

from backend.celeryconf import TASK_MINE_EXAMPLES
from backend.db.models import Dataset, Job, Model
from backend.jobs.service import enqueue_job


def queue_precompute(session: Session, model: Model, dataset: Dataset) -> list[Job]:
    """Dataset examples for the model's default layers on the dataset.

    The tasks wait (retry) until the model is registered and the dataset imported.
    """
    return [
        enqueue_job(
            session,
            kind="mine_examples",
            task_name=TASK_MINE_EXAMPLES,
            params={"model_id": model.id, "dataset_id": dataset.id, "layers": "default"},
            queue="gpu",
            priority=5,
            model_id=model.id,
            dataset_id=dataset.id,
        )
    ]
