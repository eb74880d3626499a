"""Start a missing computation from a unit page and watch it finish, with a real worker."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from backend.catalog.service import add_model
from backend.config import get_settings
from backend.db.session import session_scope
from tests.conftest import ADMIN_TOKEN
from workers.tasks.catalog import register
from workers.tasks.jobrun import run_job

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.browser, pytest.mark.celery, pytest.mark.slow]


@pytest.fixture
def tiny_model(settings, monkeypatch) -> str:  # type: ignore[no-untyped-def]
    """A registered tiny model; renders from pages take 8 steps (set before server/worker)."""
    monkeypatch.setenv("MICROSCOPE_FEATVIS_STEPS", "8")
    get_settings.cache_clear()
    with session_scope(settings.database_url) as s:
        m, job = add_model(s, "timm:test_efficientnet")
        s.info.clear()
        slug, job_id = m.slug, job.id
    assert run_job(job_id, register) == "succeeded"
    return slug


def test_render_a_missing_view_and_watch_it_finish(
    tiny_model, server, browser, worker, shot
) -> None:
    # tiny_model comes first: it sets MICROSCOPE_FEATVIS_STEPS before the server starts.
    ctx = browser.new_context()
    page = ctx.new_page()
    unit = f"{server}/models/{tiny_model}/blocks.1/5"
    page.goto(unit)
    assert "Render now" not in page.content()  # not signed in: no write button
    page.goto(f"{server}/admin/login?next=/models/{tiny_model}/blocks.1/5")
    page.fill("input[name=token]", ADMIN_TOKEN)
    page.click("form[action='/admin/login'] button")
    page.wait_for_url(unit)
    assert page.locator(".tabs a.active").inner_text().startswith("Feature visualization")
    page.click("text=Render now")
    page.wait_for_url("**view=featvis&job=*")
    job_id = page.url.rsplit("job=", 1)[1]
    job = httpx.get(f"{server}/api/v1/jobs/{job_id}").json()
    assert job["queue"] == "interactive" and job["params"]["steps"] == 8
    assert page.locator(".job-live").count() == 1
    shot(page, "render-in-progress")
    # The fragment polls the job and reloads the page once it is done.
    page.wait_for_selector(".featvis img", timeout=180_000)
    img = page.locator(".featvis img").first
    assert img.evaluate("i => i.complete && i.naturalWidth > 0")
    assert "act" in page.locator(".featvis figcaption").first.inner_text()
    shot(page, "render-done")
    ctx.close()
