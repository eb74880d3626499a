"""Queries on datasets."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.db.models import Dataset


class DatasetRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def list_datasets(self) -> Sequence[Dataset]:
        return self.session.scalars(select(Dataset).order_by(Dataset.id)).all()

    def get(self, slug: str) -> Dataset | None:
        return self.session.scalar(select(Dataset).where(Dataset.slug == slug))

    def add(self, dataset: Dataset) -> Dataset:
        self.session.add(dataset)
        self.session.flush()
        return dataset
