"""JSON API for jobs."""

from __future__ import annotations

from fastapi import APIRouter, Query

from backend import urls
from backend.deps import AdminDep, SessionDep
from backend.errors import NotFoundError
from backend.jobs.repository import JobRepository
from backend.jobs.schemas import JobOut, job_out
from backend.jobs.service import retry_job
from backend.limits import Offset
from backend.schemas import Page

router = APIRouter(prefix=urls.API, tags=["jobs"])


@router.get("/jobs", response_model=Page[JobOut])
def list_jobs(
    session: SessionDep,
    state: str | None = Query(None, description="queued, running, succeeded, failed"),
    offset: Offset = 0,
    limit: int = Query(50, ge=1, le=500),
) -> Page[JobOut]:
    """Jobs, newest first."""
    repo = JobRepository(session)
    jobs = repo.list(state=state, limit=limit, offset=offset)
    total = repo.count(state=state)
    nxt = (
        f"{urls.API}/jobs?offset={offset + limit}&limit={limit}" if offset + limit < total else None
    )
    return Page(items=[job_out(j) for j in jobs], total=total, offset=offset, limit=limit, next=nxt)


@router.get("/jobs/{job_id}", response_model=JobOut)
def get_job(job_id: int, session: SessionDep) -> JobOut:
    """One job with its progress."""
    job = JobRepository(session).get(job_id)
    if job is None:
        raise NotFoundError("job", job_id)
    return job_out(job)


@router.post("/jobs/{job_id}/retry", response_model=JobOut, dependencies=[AdminDep])
def retry(job_id: int, session: SessionDep) -> JobOut:
    """Send a job again (admin): a failed one, or one stuck queued or running on a worker
    that died; finished parts are not redone."""
    job = JobRepository(session).get(job_id)
    if job is None:
        raise NotFoundError("job", job_id)
    return job_out(retry_job(session, job))
