"""Celery configuration shared by the web process (which only sends by name) and workers."""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from backend.config import Settings
from contracts.jobs import QUEUES


def make_celery(settings: Settings, *, name: str = "microscope") -> Celery:
    """A Celery app bound to the configured broker, with the interactive, gpu and cpu queues
    (``contracts.jobs.QUEUES``)."""
    if settings.embedded_broker:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = Celery(name, broker=settings.broker_url)
    app.conf.update(
        task_queues=[Queue(q) for q in QUEUES],
        task_default_queue="cpu",
        # State and progress live in the jobs table, not in a result backend.
        task_ignore_result=True,
        # A task is acknowledged after it finishes and re-queued if its worker dies; safe
        # because every task is idempotent (it reloads its job and skips finished work).
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        accept_content=["json"],
        # Redis re-delivers an unacknowledged message after this long (a dead worker's task).
        broker_transport_options={}
        if settings.embedded_broker
        else {"visibility_timeout": 6 * 3600},
    )
    return app
