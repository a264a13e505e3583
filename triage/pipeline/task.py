"""The task body the Celery task and the embedded worker both run: claim the exam, score
it, store the run and the status in one commit, then hand the results to the outputs.

Ownership: a claimed exam names its worker (``holder_id``: host, pid, random part) and the
worker renews a heartbeat while it scores. Another delivery takes the exam over only when
that owner is gone. What ends a scoring is recorded as what it was:

* scored: the run, its scores and outbox rows, one commit;
* skipped: the exam has no image that any member scores;
* failed: a scoring, decode, missing-file or output error, with the exception text;
* transient (database or archive briefly down): the exam is released and the error raised
  as ``TransientError`` for the caller to retry with backoff; never a worker loss;
* worker lost: only when a later delivery finds the owner dead; three losses -> failed.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from triage.db import Database, Instance, ScoringRun, Study
from triage.db.models import AuditEvent, utcnow
from triage.db.runs import store_failed_run, store_result
from triage.db.states import set_status
from triage.errors import NothingToScore, ScoringError, TransientError
from triage.logs import study_context
from triage.pipeline.ensemble import Ensemble
from triage.pipeline.exam import instances_digest, score_exam
from triage.pipeline.images import ExamImage
from triage.pipeline.tomo import prefer_thin_slices
from triage.results import ExamResult
from triage.vocabulary import ExamStatus, ImageClass, Laterality, View

log = logging.getLogger(__name__)

#: deliveries of one exam's task that may end with the worker lost before it is marked failed
MAX_SCORING_ATTEMPTS = 3
#: how often a scoring worker renews its heartbeat, and after how long without one a
#: worker on another host counts as gone
HEARTBEAT_SECONDS = 10.0
OWNER_TIMEOUT_SECONDS = 60.0


class Outcome(StrEnum):
    SCORED = "scored"
    ALREADY_DONE = "already_done"
    NOT_CLAIMABLE = "not_claimable"
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class ClaimedExam:
    study_id: int
    study_instance_uid: str
    images: tuple[ExamImage, ...]
    partial: bool
    attempt: int
    holder: str = ""


def _image(row: Instance) -> ExamImage:
    assert row.laterality is not None and row.view is not None  # selected that way
    return ExamImage(sop_instance_uid=row.sop_instance_uid, sop_class_uid=row.sop_class_uid,
                     path=Path(row.path), laterality=Laterality(row.laterality),
                     view=View(row.view), image_class=ImageClass(row.image_class),
                     content_digest=row.content_digest)


def chosen_images(db: Database, study_id: int) -> list[ExamImage]:
    """The images to score: the exam's chosen set, except that for a DBT view offered both
    as thin slices and as slabs the thin slices are scored (``prefer_thin_slices``)."""
    with db.session() as session:
        rows = session.scalars(select(Instance).where(
            Instance.study_id == study_id, Instance.scorable.is_(True),
            Instance.superseded.is_(False), Instance.loopback.is_(False),
            Instance.laterality.is_not(None), Instance.view.in_([View.CC.value, View.MLO.value]),
        ).order_by(Instance.laterality, Instance.view, Instance.id)).all()
        chosen = [_image(r) for r in rows if r.chosen]
        dbt = [_image(r) for r in rows if r.image_class == ImageClass.DBT.value]
    if len(dbt) <= len([i for i in chosen if i.image_class is ImageClass.DBT]):
        return chosen
    return prefer_thin_slices(chosen, dbt)


def holder_id() -> str:
    """This worker process: host, pid and a random part (a restarted pid is another holder)."""
    return f"{socket.gethostname()}:{os.getpid()}:{_PROCESS_TOKEN}"


_PROCESS_TOKEN = secrets.token_hex(4)


def owner_alive(owner: str | None, heartbeat_at: datetime | None, now: datetime,
                timeout_seconds: float = OWNER_TIMEOUT_SECONDS) -> bool:
    """Is the worker that owns a scoring exam still there? On this host its pid is asked
    directly (a dead pid is gone at once); in any case its heartbeat must be younger than
    ``timeout_seconds``."""
    if not owner:
        return False
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host == socket.gethostname() and pid_text.isdigit() and int(pid_text) != os.getpid():
        try:
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # another user's live process
    return heartbeat_at is not None and (now - heartbeat_at).total_seconds() < timeout_seconds


def claim(db: Database, study_id: int, *, holder: str | None = None,
          owner_timeout: float = OWNER_TIMEOUT_SECONDS) -> ClaimedExam | None:
    """queued -> scoring, owned by ``holder`` with a heartbeat; None when not ours to score.

    A `scoring` exam is taken over only when its owner is gone: released after a transient
    error (no owner: not a worker loss), or dead (a worker loss). The claim that finds the
    MAX_SCORING_ATTEMPTS-th worker loss marks the exam failed instead of looping. While the
    owner lives, another delivery is dropped.
    """
    holder = holder or holder_id()
    now = utcnow()
    with db.session() as session:
        study = session.get(Study, study_id, with_for_update=not db.is_sqlite)
        if study is None:
            log.warning("task for unknown exam", extra={"study_id": study_id})
            return None
        status = ExamStatus(study.status)
        if status is ExamStatus.QUEUED:
            set_status(session, study, ExamStatus.SCORING, "claimed by a worker", now=now)
        elif status is ExamStatus.SCORING:
            owner = study.scoring_owner
            if owner and owner != holder and owner_alive(owner, study.heartbeat_at, now,
                                                         owner_timeout):
                log.info("exam is being scored by a live worker; this delivery is dropped",
                         extra={"study_instance_uid": study.study_instance_uid, "owner": owner})
                return None
            if owner and owner != holder:  # its worker died while scoring
                study.worker_losses += 1
                if study.worker_losses >= MAX_SCORING_ATTEMPTS:
                    set_status(session, study, ExamStatus.FAILED,
                               f"worker lost: scoring was interrupted {study.worker_losses} "
                               f"times by the loss of its worker (last {owner}); not retried",
                               now=now)
                    log.error("exam failed after repeated worker loss",
                              extra={"study_instance_uid": study.study_instance_uid})
                    return None
                log.warning("exam taken over from a lost worker",
                            extra={"study_instance_uid": study.study_instance_uid,
                                   "lost_owner": owner, "worker_losses": study.worker_losses})
        else:
            return None
        study.scoring_attempts += 1
        study.scoring_owner = holder
        study.heartbeat_at = now
        uid, partial, attempt = study.study_instance_uid, study.partial, study.scoring_attempts
    return ClaimedExam(study_id=study_id, study_instance_uid=uid,
                       images=tuple(chosen_images(db, study_id)), partial=partial,
                       attempt=attempt, holder=holder)


class Heartbeat(threading.Thread):
    """Renews the owner's heartbeat while it scores (a failed renewal is only logged)."""

    def __init__(self, db: Database, study_id: int, holder: str,
                 every: float = HEARTBEAT_SECONDS) -> None:
        super().__init__(name=f"heartbeat-{study_id}", daemon=True)
        self.db, self.study_id, self.holder, self.every = db, study_id, holder, every
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.wait(self.every):
            try:
                with self.db.session() as session:
                    session.execute(update(Study).where(
                        Study.id == self.study_id, Study.scoring_owner == self.holder,
                    ).values(heartbeat_at=utcnow()))
            except OperationalError as exc:
                log.warning("heartbeat not written", extra={"study_id": self.study_id,
                                                            "error": str(exc.orig)})

    def stop(self) -> None:
        self.stop_event.set()


class OutputStage(Protocol):
    """What happens to a result besides the DB rows (``triage.delivery.Publisher``)."""

    def prepare(self, db: Database, study_id: int, result: ExamResult) -> Sequence[Any]:
        """Build and durably write the output objects (outside the transaction)."""

    def record(self, session: Session, study_id: int, run: ScoringRun,
               written: Sequence[Any]) -> int:
        """Record them (outbox rows) inside the transaction that marks the exam scored."""

    def after_commit(self, db: Database, study_id: int) -> None:
        """E.g. mark the exam delivered when the outputs need no sending."""




def _finish_failed(db: Database, claimed: ClaimedExam, model_set_version: str, reason: str,
                   *, skip: bool = False) -> Outcome:
    """Record what really happened: a failed run with its reason and the exam failed, or the
    exam skipped when it has nothing any member scores."""
    with db.session() as session:
        study = session.get(Study, claimed.study_id, with_for_update=not db.is_sqlite)
        if study is None or study.status != ExamStatus.SCORING.value:
            return Outcome.ALREADY_DONE
        if skip:
            set_status(session, study, ExamStatus.SKIPPED, reason)
        else:
            store_failed_run(session, claimed.study_id, model_set_version,
                             instances_digest(claimed.images), reason)
            set_status(session, study, ExamStatus.FAILED, reason)
    log.error("exam skipped" if skip else "exam failed",
              extra={"study_instance_uid": claimed.study_instance_uid, "reason": reason})
    return Outcome.SKIPPED if skip else Outcome.FAILED


def release_after_transient_error(db: Database, claimed: ClaimedExam, error: str) -> None:
    """Give the exam up (no owner) and count the retry, so the next delivery takes it over
    without counting a worker loss. Best effort: the database may be what is down; then
    the owner's pid check (same host) or its heartbeat age frees the exam later."""
    try:
        with db.session() as session:
            session.execute(update(Study).where(
                Study.id == claimed.study_id, Study.scoring_owner == claimed.holder,
                Study.status == ExamStatus.SCORING.value,
            ).values(scoring_owner=None, transient_retries=Study.transient_retries + 1))
            session.add(AuditEvent(kind="transient_error", study_id=claimed.study_id,
                                   detail={"error": error[:2000], "holder": claimed.holder}))
    except OperationalError:
        log.warning("could not release the exam after a transient error",
                    extra={"study_instance_uid": claimed.study_instance_uid})


def _what(stage: str, exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return f"{stage}: missing file {exc.filename}: {exc.strerror}"
    return f"{stage}: {type(exc).__name__}: {exc}"


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, TransientError | OperationalError)


def process_study(db: Database, ensemble: Ensemble, study_id: int,
                  outputs: OutputStage | None = None) -> Outcome:
    """Claim, score, store, mark scored; idempotent and safe to redeliver.

    Raises ``TransientError`` (after releasing the exam) when the database or the archive is
    briefly unavailable; every other error ends the exam `failed` with its true reason.
    """
    try:
        claimed = claim(db, study_id)
    except OperationalError as exc:
        raise TransientError(f"database unavailable while claiming exam {study_id}: {exc.orig}") from exc
    if claimed is None:
        return Outcome.NOT_CLAIMABLE
    heartbeat = Heartbeat(db, study_id, claimed.holder)
    heartbeat.start()
    try:
        with study_context(claimed.study_instance_uid):  # every line below names the study
            return _score_and_store(db, ensemble, claimed, outputs)
    except Exception as exc:
        if _transient(exc):
            release_after_transient_error(db, claimed, str(exc))
            if isinstance(exc, TransientError):
                raise
            raise TransientError(f"database unavailable while scoring exam "
                                 f"{claimed.study_instance_uid}: {exc}") from exc
        return _finish_failed(db, claimed, ensemble.model_set_version, _what("unexpected error", exc))
    finally:
        heartbeat.stop()


def _score_and_store(db: Database, ensemble: Ensemble, claimed: ClaimedExam,
                     outputs: OutputStage | None) -> Outcome:
    log.info("scoring exam", extra={"study_instance_uid": claimed.study_instance_uid,
                                     "attempt": claimed.attempt, "views": len(claimed.images)})
    version = ensemble.model_set_version
    try:
        result = score_exam(claimed.images, ensemble, study_instance_uid=claimed.study_instance_uid,
                            partial=claimed.partial)
    except NothingToScore as exc:
        return _finish_failed(db, claimed, version, str(exc), skip=True)
    except ScoringError as exc:
        return _finish_failed(db, claimed, version, str(exc))
    except Exception as exc:
        if _transient(exc):
            raise
        return _finish_failed(db, claimed, version, _what("scoring", exc))
    try:
        written: Sequence[Any] = outputs.prepare(db, claimed.study_id, result) if outputs else ()
    except Exception as exc:
        if _transient(exc):
            raise
        return _finish_failed(db, claimed, version, _what("building the outputs", exc))
    with db.session() as session:
        study = session.get(Study, claimed.study_id, with_for_update=not db.is_sqlite)
        assert study is not None
        if study.status != ExamStatus.SCORING.value or study.scoring_owner != claimed.holder:
            return Outcome.ALREADY_DONE  # another delivery took it over or finished first
        run = store_result(session, claimed.study_id, result)
        if outputs is not None:
            session.flush()
            outputs.record(session, claimed.study_id, run, written)
        # the exam's chosen_set_digest stays the assembly's (what a later image is
        # compared with); the run records which images (and their contents) it scored
        set_status(session, study, ExamStatus.SCORED,
                   f"score {result.exam_score:.4f}, category {result.category}")
    log.info("exam scored", extra={"study_instance_uid": claimed.study_instance_uid,
                                    "score": round(result.exam_score, 4),
                                    "category": result.category,
                                    "model_set_version": result.model_set_version})
    if outputs is not None:
        outputs.after_commit(db, claimed.study_id)
    return Outcome.SCORED
