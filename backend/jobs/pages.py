"""Jobs page and the live-progress fragment other pages poll."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from backend.deps import SessionDep, is_admin, require_admin
from backend.errors import NotFoundError
from backend.jobs.repository import JobRepository
from backend.jobs.schemas import job_out
from backend.jobs.service import retry_job
from backend.templating import templates
from contracts.jobs import JobState

router = APIRouter(include_in_schema=False)


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(request: Request, session: SessionDep) -> HTMLResponse:
    jobs = [job_out(j) for j in JobRepository(session).list(limit=200)]
    return templates.TemplateResponse(
        request, "jobs.html", {"jobs": jobs, "admin": is_admin(request)}
    )


@router.post("/jobs/{job_id}/retry", dependencies=[Depends(require_admin)])
def retry(job_id: int, session: SessionDep) -> RedirectResponse:
    job = JobRepository(session).get(job_id)
    if job is None:
        raise NotFoundError("job", job_id)
    retry_job(session, job)
    return RedirectResponse("/jobs", status_code=303)


@router.get("/partials/progress", response_class=HTMLResponse)
def progress_fragment(request: Request, session: SessionDep) -> HTMLResponse:
    """Jobs in flight; keeps polling itself while any are queued or running."""
    repo = JobRepository(session)
    active = [job_out(j) for j in repo.unfinished()]
    failed = [job_out(j) for j in repo.list(state=JobState.FAILED, limit=5)]
    return templates.TemplateResponse(
        request, "_progress.html", {"active": active, "failed": failed}
    )
