"""The Celery app the workers run: ``celery -A workers.celery_app worker``."""

from __future__ import annotations

from celery.signals import worker_ready

from backend.celeryconf import make_celery
from backend.config import get_settings

app = make_celery(get_settings())
app.conf.imports = (
    "workers.tasks.catalog",
    "workers.tasks.datasets",
    "workers.tasks.mining",
    "workers.tasks.featvis",
    "workers.tasks.facets",
    "workers.tasks.text",
    "workers.tasks.weights",
    "workers.tasks.condprob",
    "workers.tasks.typographic",
)


@worker_ready.connect
def _start_reconciler(**_: object) -> None:
    # Every worker keeps the jobs table and the broker in line (backend/jobs/reconcile.py).
    from workers.tasks.lease import start_reconciler

    start_reconciler()
