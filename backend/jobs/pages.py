"""Jobs page and the live-progress fragments other pages poll."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from backend.deps import SessionDep, is_admin
from backend.errors import NotFoundError
from backend.jobs.repository import JobRepository
from backend.jobs.schemas import job_out
from backend.templating import templates
from contracts.jobs import FINISHED_STATES, JobState

router = APIRouter(include_in_schema=False)


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(request: Request, session: SessionDep) -> HTMLResponse:
    jobs = [job_out(j) for j in JobRepository(session).list(limit=200)]
    return templates.TemplateResponse(
        request, "jobs.html", {"jobs": jobs, "admin": is_admin(request)}
    )


@router.get("/partials/progress", response_class=HTMLResponse)
def progress_fragment(request: Request, session: SessionDep) -> HTMLResponse:
    """Jobs in flight; keeps polling itself while any are queued or running."""
    repo = JobRepository(session)
    active = [job_out(j) for j in repo.unfinished()]
    failed = [job_out(j) for j in repo.list(state=JobState.FAILED, limit=5)]
    return templates.TemplateResponse(
        request, "_progress.html", {"active": active, "failed": failed}
    )


@router.get("/partials/job/{job_id}", response_class=HTMLResponse)
def job_fragment(request: Request, job_id: int, session: SessionDep) -> Response:
    """One job's progress; when it is done, htmx reloads the page to show the result."""
    job = JobRepository(session).get(job_id)
    if job is None:
        raise NotFoundError("job", job_id)
    out = job_out(job)
    resp = templates.TemplateResponse(request, "_job.html", {"job": out})
    if out.state in FINISHED_STATES:
        resp.headers["HX-Refresh"] = "true"
    return resp
