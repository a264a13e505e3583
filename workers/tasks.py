"""``score_study(study_id)``: IDs only; the body is ``triage.pipeline.process_study``.

Models are loaded once per worker process and cached. Transient errors (database or broker
briefly down) are retried with exponential backoff; everything else is recorded on the exam
by the pipeline and not retried. Deliveries are counted in the DB, so an exam whose scoring
kills the worker ends `failed` after three deliveries.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task, shared_task
from celery.signals import worker_process_init

from triage.config import Settings, load_settings
from triage.db import Database, create_database
from triage.delivery import Publisher
from triage.errors import TransientError
from triage.pipeline import Ensemble, load_ensemble, process_study
from workers.celery_app import TASK_NAME

log = logging.getLogger(__name__)

_STATE: dict[str, Any] = {}


def _runtime() -> tuple[Settings, Database, Ensemble]:
    """Settings, DB and models, created once per worker process."""
    if "ensemble" not in _STATE:
        settings = load_settings()
        _STATE["settings"] = settings
        _STATE["db"] = create_database(settings.resolved_database_url)
        _STATE["ensemble"] = load_ensemble(settings)
    return _STATE["settings"], _STATE["db"], _STATE["ensemble"]


@worker_process_init.connect
def _load_models_in_child(**_kwargs: Any) -> None:
    """Load the models when the pool process starts, not on the first exam."""
    try:
        _runtime()
    except Exception:  # reported again, with the exam, when a task runs
        log.exception("loading the ensemble at worker start failed")


@shared_task(name=TASK_NAME, bind=True, acks_late=True, reject_on_worker_lost=True,
             # Celery's own retry: transient errors (the pipeline released the exam first,
             # so a retry is never counted as a worker loss), exponential backoff 5 s..5 min
             autoretry_for=(TransientError,), retry_backoff=5, retry_backoff_max=300,
             retry_jitter=True, max_retries=8)
def score_study(task: Task, study_id: int) -> str:
    """Score exam ``study_id`` (a database id: no patient identifier travels the broker).

    After ``max_retries`` the task gives up; the exam stays `scoring` without an owner and
    the reconciler sends it again later."""
    settings, db, ensemble = _runtime()
    return process_study(db, ensemble, study_id, Publisher(settings)).value

