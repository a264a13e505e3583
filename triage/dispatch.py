"""From `ready` to a worker: enqueue after commit, reconcile, and the embedded worker.

* ``enqueue_ready``: every `ready` exam becomes `queued` in a committed transaction, and
  only then is its id handed to the broker. If the broker is down the exam stays `queued`
  and the reconciler sends it again later.
* ``reconcile``: one process at a time (a DB lease) re-enqueues exams that sat in `queued`
  longer than ``requeue_after`` seconds, and `scoring` exams whose owner is gone (released
  after a transient error, or dead: no heartbeat; the message may be lost, e.g. Redis
  restarted). A second delivery of the same exam is harmless: the claim in
  ``pipeline.claim`` drops it while the owner lives and lets exactly one take over.
* ``EmbeddedWorker``: with no broker, a thread that claims queued exams straight from the DB
  and runs the same ``pipeline.process_study`` as the Celery task.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import select

from triage.config import Settings
from triage.db import Database, Study
from triage.db.leases import acquire_lease
from triage.db.models import utcnow
from triage.db.states import set_status
from triage.errors import TransientError
from triage.pipeline import Ensemble, OutputStage, process_study
from triage.pipeline.task import owner_alive
from triage.vocabulary import ExamStatus

log = logging.getLogger(__name__)

Enqueue = Callable[[int], None]
RECONCILER_LEASE = "reconciler"


def holder_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


def enqueue_ready(db: Database, enqueue: Enqueue | None) -> list[int]:
    """ready -> queued (committed), then hand each id to ``enqueue`` (None = embedded)."""
    with db.session() as session:
        ready = session.scalars(select(Study).where(Study.status == ExamStatus.READY.value)
                                .order_by(Study.ready_at, Study.id)).all()
        ids = []
        for study in ready:
            set_status(session, study, ExamStatus.QUEUED, "queued for scoring")
            ids.append(study.id)
    if enqueue is not None:
        for study_id in ids:
            _send(enqueue, study_id)
    return ids


def _send(enqueue: Enqueue, study_id: int) -> bool:
    try:
        enqueue(study_id)
        return True
    except Exception as exc:  # broker down: the reconciler sends it again later
        log.warning("enqueue failed; the reconciler will retry",
                    extra={"study_id": study_id, "error": str(exc)})
        return False


def reconcile(db: Database, settings: Settings, enqueue: Enqueue, *, requeue_after: float,
              now: datetime | None = None, holder: str | None = None) -> list[int]:
    """Re-enqueue exams stuck in queued, and scoring exams whose owner is gone (not those a
    live worker is scoring, however long it takes); only the lease holder acts."""
    now = now or utcnow()
    holder = holder or holder_id()
    with db.session() as session:
        if not acquire_lease(session, RECONCILER_LEASE, holder, ttl_seconds=max(30.0, requeue_after)):
            return []
        queued_before = now - timedelta(seconds=requeue_after)
        candidates = session.scalars(select(Study).where(
            ((Study.status == ExamStatus.QUEUED.value) & (Study.updated_at < queued_before))
            | ((Study.status == ExamStatus.SCORING.value) & (Study.updated_at < queued_before))
        )).all()
        stuck = [s for s in candidates if s.status == ExamStatus.QUEUED.value
                 or not owner_alive(s.scoring_owner, s.heartbeat_at, now)]
        ids = [s.id for s in stuck]
        for study in stuck:  # touch, so the next pass waits another period
            study.updated_at = now
    sent = [i for i in ids if _send(enqueue, i)]
    if sent:
        log.info("re-enqueued stuck exams", extra={"study_ids": sent})
    return sent


def next_queued(db: Database) -> int | None:
    """The next exam for the embedded worker: queued, or scoring with its owner gone (this
    process died or gave it up after a transient error)."""
    now = utcnow()
    with db.session() as session:
        rows = session.execute(
            select(Study.id, Study.status, Study.scoring_owner, Study.heartbeat_at)
            .where(Study.status.in_([ExamStatus.QUEUED.value, ExamStatus.SCORING.value]))
            .order_by(Study.queued_at, Study.id).limit(50)).all()
    for study_id, status, owner, heartbeat_at in rows:
        if status == ExamStatus.QUEUED.value or not owner_alive(owner, heartbeat_at, now):
            return int(study_id)
    return None


class EmbeddedWorker(threading.Thread):
    """Scores queued exams in this process, one at a time (the embedded default)."""

    def __init__(self, db: Database, ensemble_factory: Callable[[], Ensemble],
                 outputs: OutputStage | None = None, poll_seconds: float = 0.5) -> None:
        super().__init__(name="embedded-worker", daemon=True)
        self.db = db
        self.ensemble_factory = ensemble_factory
        self.outputs = outputs
        self.poll_seconds = poll_seconds
        self.stop_event = threading.Event()
        self._ensemble: Ensemble | None = None

    def stop(self) -> None:
        self.stop_event.set()

    def run_once(self) -> bool:
        """Move ready exams to queued and score one; True when something was scored."""
        enqueue_ready(self.db, None)
        study_id = next_queued(self.db)
        if study_id is None:
            return False
        if self._ensemble is None:
            self._ensemble = self.ensemble_factory()
        process_study(self.db, self._ensemble, study_id, self.outputs)
        return True

    def run(self) -> None:
        log.info("embedded worker started")
        transient = 0  # consecutive transient errors: back off exponentially (cap 60 s)
        while not self.stop_event.is_set():
            try:
                busy = self.run_once()
                transient = 0
            except TransientError as exc:
                transient += 1
                delay = min(60.0, 2.0 ** transient)
                log.warning("transient error, retrying", extra={"error": str(exc),
                                                                "retry_in_s": delay})
                self.stop_event.wait(delay)
                busy = False
            except Exception:
                log.exception("embedded worker step failed")
                busy = False
            if not busy:
                self.stop_event.wait(self.poll_seconds)
        log.info("embedded worker stopped")
