"""Queries on the jobs table."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from backend.db.models import Job
from backend.limits import storable_id
from contracts.jobs import (
    IN_FLIGHT_STATES,
    FeatvisBulkParams,
    FeatvisParams,
    MineExamplesParams,
    MineShardParams,
)


class JobRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, job_id: int) -> Job | None:
        if not storable_id(job_id):
            return None
        return self.session.get(Job, job_id)

    def get_by_dedupe_key(self, key: str) -> Job | None:
        return self.session.scalar(select(Job).where(Job.dedupe_key == key))

    def list(self, *, state: str | None = None, limit: int = 50, offset: int = 0) -> Sequence[Job]:
        """Jobs, newest first."""
        q = select(Job)
        if state:
            q = q.where(Job.state == state)
        q = q.order_by(Job.id.desc()).limit(limit).offset(offset)
        return self.session.scalars(q).all()

    def count(self, *, state: str | None = None) -> int:
        q = select(func.count(Job.id))
        if state:
            q = q.where(Job.state == state)
        return int(self.session.scalar(q) or 0)

    def with_spawned(self, job_ids: Collection[int]) -> Sequence[Job]:
        """The given jobs and the jobs their tasks queued in turn, by id.

        A mine_examples job queues its mine_shard jobs (same model and dataset); a
        featvis_bulk job queues featvis jobs of blocks of units (same model, on the gpu queue,
        after it; a render asked for from a page goes on the interactive queue). Jobs that
        someone else queued meanwhile for other work are not among them.
        """
        parents = self.session.scalars(select(Job).where(Job.id.in_(job_ids))).all()
        spawned = [
            and_(
                Job.kind == MineShardParams.kind,
                Job.model_id == p.model_id,
                Job.dataset_id == p.dataset_id,
                Job.id > p.id,
            )
            for p in parents
            if p.kind == MineExamplesParams.kind
        ] + [
            and_(
                Job.kind == FeatvisParams.kind,
                Job.model_id == p.model_id,
                Job.queue == "gpu",
                Job.id > p.id,
            )
            for p in parents
            if p.kind == FeatvisBulkParams.kind
        ]
        q = select(Job).where(or_(Job.id.in_(job_ids), *spawned)).order_by(Job.id)
        return self.session.scalars(q).all()

    def unfinished(self) -> Sequence[Job]:
        q = select(Job).where(Job.state.in_(IN_FLIGHT_STATES)).order_by(Job.id)
        return self.session.scalars(q).all()

    def add(self, job: Job) -> Job:
        self.session.add(job)
        self.session.flush()
        return job
