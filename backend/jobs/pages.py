"""Jobs page and the live-progress fragment other pages poll."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from backend.deps import SessionDep
from backend.jobs.repository import JobRepository
from backend.jobs.schemas import job_out
from backend.templating import templates

router = APIRouter(include_in_schema=False)


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(request: Request, session: SessionDep) -> HTMLResponse:
    jobs = [job_out(j) for j in JobRepository(session).list(limit=200)]
    return templates.TemplateResponse(request, "jobs.html", {"jobs": jobs})


@router.get("/partials/progress", response_class=HTMLResponse)
def progress_fragment(request: Request, session: SessionDep) -> HTMLResponse:
    """Jobs in flight; keeps polling itself while any are queued or running."""
    repo = JobRepository(session)
    active = [job_out(j) for j in repo.unfinished()]
    failed = [job_out(j) for j in repo.list(state="failed", limit=5)]
    return templates.TemplateResponse(
        request, "_progress.html", {"active": active, "failed": failed}
    )
