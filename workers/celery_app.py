"""The Celery application (Redis broker from TRIAGE_BROKER_URL), queue ``gpu``.

Reliability settings (DESIGN.md): late acknowledgement with reject-on-worker-lost, so a
killed worker's exam is redelivered; prefetch multiplier 1, so a worker holds one exam at
a time; the broker visibility timeout above twice the longest task; no result backend
(results live in the database).
"""

from __future__ import annotations

from collections.abc import Callable

from celery import Celery

from triage.config import Settings, load_settings

QUEUE = "gpu"
TASK_NAME = "triage.score_study"


def make_celery(settings: Settings) -> Celery:
    if not settings.broker_url:
        raise ValueError("TRIAGE_BROKER_URL is empty: the embedded worker runs in-process instead")
    app = Celery("triage", broker=settings.broker_url, include=["workers.tasks"])
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=QUEUE,
        task_routes={TASK_NAME: {"queue": QUEUE}},
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        broker_transport_options={"visibility_timeout": settings.broker_visibility_timeout},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_track_started=False,
    )
    return app


def app_from_environment() -> Celery:
    """Used by `celery -A workers.celery_app:app` and `triage worker`."""
    return make_celery(load_settings())


def enqueue_function(app: Celery) -> Callable[[int], None]:
    """What the dispatcher calls after the DB commit: send the exam id to queue ``gpu``."""

    def enqueue(study_id: int) -> None:
        app.send_task(TASK_NAME, args=[study_id], queue=QUEUE)

    return enqueue
