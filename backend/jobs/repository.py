"""Queries on the jobs table."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend.db.models import Job
from backend.limits import storable_id
from contracts.jobs import IN_FLIGHT_STATES


class JobRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, job_id: int) -> Job | None:
        if not storable_id(job_id):
            return None
        return self.session.get(Job, job_id)

    def get_by_dedupe_key(self, key: str) -> Job | None:
        return self.session.scalar(select(Job).where(Job.dedupe_key == key))

    def list(
        self,
        *,
        state: str | None = None,
        model_id: int | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> Sequence[Job]:
        q = select(Job)
        if state:
            q = q.where(Job.state == state)
        if model_id is not None:
            q = q.where(Job.model_id == model_id)
        q = q.order_by(Job.id.desc()).limit(limit).offset(offset)
        return self.session.scalars(q).all()

    def count(self, *, state: str | None = None) -> int:
        q = select(func.count(Job.id))
        if state:
            q = q.where(Job.state == state)
        return int(self.session.scalar(q) or 0)

    def unfinished(self) -> Sequence[Job]:
        q = select(Job).where(Job.state.in_(IN_FLIGHT_STATES)).order_by(Job.id)
        return self.session.scalars(q).all()

    def add(self, job: Job) -> Job:
        self.session.add(job)
        self.session.flush()
        return job
