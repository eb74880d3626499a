"""The FastAPI application: JSON API under /api/v1, HTML pages, stored objects."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.pool import StaticPool
from starlette.exceptions import HTTPException as StarletteHTTPException

from backend import objects
from backend.analyses import api as analyses_api
from backend.auth import AdminAuth
from backend.auth import router as auth_router
from backend.catalog import actions as catalog_actions
from backend.catalog import api as catalog_api
from backend.catalog import pages as catalog_pages
from backend.catalog import weights_api
from backend.config import Settings, get_settings
from backend.datasets import api as datasets_api
from backend.db.version import read_version
from backend.errors import MicroscopeError
from backend.etag import ETagMiddleware
from backend.failures import ERROR_RESPONSES, add_failure_handlers, error_response
from backend.families import actions as families_actions
from backend.families import api as families_api
from backend.families import pages as families_pages
from backend.health import Health
from backend.health import router as health_router
from backend.jobs import actions as jobs_actions
from backend.jobs import api as jobs_api
from backend.jobs import pages as jobs_pages
from backend.limits import GuardedWrites
from backend.pagecache import PageCache
from backend.storage import make_store
from backend.templating import FRONTEND
from backend.unitpage import actions as unitpage_actions
from backend.unitpage import pages as unitpage_pages

DESCRIPTION = """
Browse the units of vision models: dataset examples, feature visualizations, text views.
Reads are open; writes need the admin token as `Authorization: Bearer <token>`.
Errors are JSON objects `{"error": code, "detail": message, "status": http_status}`.
"""


VERSION_CONNECT_SECONDS = 1
HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}


def _version_engine(url: str) -> Engine:
    """An engine of one connection for reading the catalog version.

    The page cache reads it on a thread of its own, so it must never wait on the shared pool:
    with every pooled connection held by handlers that need the loop to finish, that wait
    would deadlock the server (seen under load). One connection, used only by that thread;
    a short connect timeout, so a database that is away is noticed at once.
    """
    sqlite = url.startswith("sqlite")
    args: dict[str, object] = (
        {"check_same_thread": False} if sqlite else {"connect_timeout": VERSION_CONNECT_SECONDS}
    )
    engine = create_engine(url, poolclass=StaticPool, pool_pre_ping=True, connect_args=args)
    if sqlite:
        event.listen(engine, "connect", lambda c, _r: c.execute("PRAGMA query_only=ON"))
    return engine


def _version_reader(engine: Engine) -> Callable[[], int | None]:
    def read() -> int | None:
        try:
            with engine.connect() as conn:
                return read_version(conn)
        except Exception:  # noqa: BLE001 - database unreachable: serve uncached
            return None

    return read


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app for ``settings`` (the environment's by default)."""
    settings = settings or get_settings()
    version_engine = _version_engine(settings.database_url)
    version_reader = ThreadPoolExecutor(1, thread_name_prefix="catalog-version")

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        version_reader.shutdown(wait=False, cancel_futures=True)
        version_engine.dispose()  # the page cache's own connection

    app = FastAPI(
        lifespan=lifespan,
        responses=ERROR_RESPONSES,
        title="Open Microscope",
        version="0.1.0",
        description=DESCRIPTION,
        openapi_tags=[
            {"name": "models", "description": "Models, layers and units"},
            {"name": "datasets", "description": "Image datasets"},
            {"name": "jobs", "description": "Precompute jobs and their progress"},
            {"name": "families", "description": "Families of units, labels"},
            {"name": "search", "description": "Find units by label or by text"},
        ],
    )
    app.state.settings = settings
    app.state.store = make_store(settings)
    app.state.auth = AdminAuth(settings)
    app.state.health = Health(settings)

    app.add_middleware(ETagMiddleware)
    app.add_middleware(
        PageCache,
        read_version=_version_reader(version_engine),
        max_bytes=settings.page_cache_mb * 1024 * 1024,
        check_seconds=settings.page_cache_check_seconds,
        reader=version_reader,
    )
    app.add_middleware(
        GuardedWrites, auth=app.state.auth, max_bytes=settings.max_body_kb * 1024
    )
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins or [],
        allow_methods=["GET", "HEAD", "OPTIONS"],  # CORS for reads only
        allow_headers=["*"],
    )

    add_failure_handlers(app)

    @app.exception_handler(MicroscopeError)
    async def _domain_error(request: Request, exc: MicroscopeError) -> Response:
        return error_response(request, exc.status, exc.code, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = HTTP_CODES.get(exc.status_code, "http_error")
        return error_response(request, exc.status_code, code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        detail = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        return error_response(request, 422, "invalid_input", detail)

    app.mount("/static", StaticFiles(directory=FRONTEND / "static"), name="static")
    # The unit page, the most visited, first: routes are tried in order, and a dozen routers'
    # misses cost it a seventh of its CPU. Before the catalog's pages in any case: the layer
    # page's {layer:path} matches it too. No other GET route ends in /{unit:int}.
    app.include_router(unitpage_pages.router)
    app.include_router(weights_api.router)  # before catalog_api: its {layer:path} is greedy
    # Before the catalog's: its layer route's path parameter would take ".../units/N/condprob".
    app.include_router(analyses_api.router)
    app.include_router(catalog_api.router)
    app.include_router(datasets_api.router)
    app.include_router(jobs_api.router)
    app.include_router(families_api.router)
    app.include_router(objects.router)
    app.include_router(auth_router)
    app.include_router(health_router)
    app.include_router(catalog_actions.router)
    app.include_router(jobs_actions.router)
    app.include_router(families_actions.router)
    app.include_router(unitpage_actions.router)
    app.include_router(analyses_api.pages)
    app.include_router(jobs_pages.router)
    app.include_router(families_pages.router)
    app.include_router(catalog_pages.router)

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> HTMLResponse:
        return HTMLResponse(status_code=204)

    return app


def app_factory() -> FastAPI:
    """Entry point for ``uvicorn --factory backend.app:app_factory``."""
    return create_app()
