"""Start-up of the API and the workers: wait for the database and the object store.

Scaled out, every container starts at once and PostgreSQL or S3 may answer seconds after the
API or a worker does; they wait up to ``START_TIMEOUT`` seconds instead of crashing.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import text

from backend.config import Settings
from backend.db.session import get_engine
from backend.storage import make_store


class ServicesUnavailable(RuntimeError):
    """A service did not answer before the deadline."""


def check_database(settings: Settings) -> None:
    """One round trip to the database."""
    with get_engine(settings.database_url).connect() as conn:
        conn.execute(text("SELECT 1"))


def check_store(settings: Settings) -> None:
    """Open the object store (for S3: the bucket is found or created)."""
    make_store(settings)


CHECKS: dict[str, Callable[[Settings], None]] = {
    "database": check_database,
    "object store": check_store,
}


def wait_for_services(
    settings: Settings,
    timeout: float,
    *,
    interval: float = 1.0,
    on_wait: Callable[[str, Exception], None] = lambda name, error: None,
    checks: dict[str, Callable[[Settings], None]] = CHECKS,
) -> None:
    """Return once every check passes; raise ServicesUnavailable after ``timeout`` seconds.

    ``on_wait`` is told the first time each service is waited for.
    """
    deadline = time.monotonic() + timeout
    for name, check in checks.items():
        waited = False
        while True:
            try:
                check(settings)
                break
            except Exception as e:  # noqa: BLE001 - any failure to answer counts as not yet
                if time.monotonic() >= deadline:
                    raise ServicesUnavailable(
                        f"the {name} did not answer within {timeout:g} s: {e}"
                    ) from e
                if not waited:
                    on_wait(name, e)
                    waited = True
                time.sleep(interval)
