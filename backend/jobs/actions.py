"""Browser actions on jobs: an admin sends a failed one again from the jobs page."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import RedirectResponse

from backend.deps import SessionDep, require_admin
from backend.errors import NotFoundError
from backend.jobs.repository import JobRepository
from backend.jobs.service import retry_job

router = APIRouter(include_in_schema=False)


@router.post("/jobs/{job_id}/retry", dependencies=[Depends(require_admin)])
def retry(job_id: int, session: SessionDep) -> RedirectResponse:
    """Send a failed job again, then show the jobs page."""
    job = JobRepository(session).get(job_id)
    if job is None:
        raise NotFoundError("job", job_id)
    retry_job(session, job)
    return RedirectResponse("/jobs", status_code=303)
