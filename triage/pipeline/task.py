"""The task body the Celery task and the embedded worker both run: claim the exam, score
it, store the run and the status in one commit, then hand the results to the outputs."""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from triage.db import Database, Instance, ScoringRun, Study
from triage.db.runs import store_failed_run, store_result
from triage.db.states import set_status
from triage.errors import ScoringError, TransientError
from triage.pipeline.ensemble import Ensemble
from triage.pipeline.exam import instances_digest, score_exam
from triage.pipeline.images import ExamImage
from triage.pipeline.tomo import prefer_thin_slices
from triage.results import ExamResult
from triage.vocabulary import ExamStatus, ImageClass, Laterality, View

log = logging.getLogger(__name__)

#: deliveries of one exam's task that may kill a worker before it is marked failed
MAX_SCORING_ATTEMPTS = 3


class Outcome(StrEnum):
    SCORED = "scored"
    ALREADY_DONE = "already_done"
    NOT_CLAIMABLE = "not_claimable"
    FAILED = "failed"


@dataclass(frozen=True)
class ClaimedExam:
    study_id: int
    study_instance_uid: str
    images: tuple[ExamImage, ...]
    partial: bool
    attempt: int


def _image(row: Instance) -> ExamImage:
    assert row.laterality is not None and row.view is not None  # selected that way
    return ExamImage(sop_instance_uid=row.sop_instance_uid, sop_class_uid=row.sop_class_uid,
                     path=Path(row.path), laterality=Laterality(row.laterality),
                     view=View(row.view), image_class=ImageClass(row.image_class))


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


def claim(db: Database, study_id: int) -> ClaimedExam | None:
    """queued -> scoring (or a redelivery of a scoring exam); None when not ours to score.

    Each claim counts a delivery; the one after MAX_SCORING_ATTEMPTS deliveries that never
    finished (each killed its worker) marks the exam failed instead of looping.
    """
    with db.session() as session:
        study = session.get(Study, study_id, with_for_update=not db.is_sqlite)
        if study is None:
            log.warning("task for unknown exam", extra={"study_id": study_id})
            return None
        status = ExamStatus(study.status)
        if status is ExamStatus.QUEUED:
            set_status(session, study, ExamStatus.SCORING, "claimed by a worker")
        elif status is ExamStatus.SCORING:
            if study.scoring_attempts >= MAX_SCORING_ATTEMPTS:
                set_status(session, study, ExamStatus.FAILED,
                           f"scoring did not finish in {study.scoring_attempts} deliveries "
                           "(each ended with the worker lost); not retried")
                log.error("exam failed after repeated worker loss",
                          extra={"study_instance_uid": study.study_instance_uid})
                return None
            log.warning("redelivered exam resumes scoring",
                        extra={"study_instance_uid": study.study_instance_uid,
                               "attempt": study.scoring_attempts + 1})
        else:
            return None
        study.scoring_attempts += 1
        uid, partial, attempt = study.study_instance_uid, study.partial, study.scoring_attempts
    return ClaimedExam(study_id=study_id, study_instance_uid=uid,
                       images=tuple(chosen_images(db, study_id)), partial=partial, attempt=attempt)


def _inject_fault(claimed: ClaimedExam) -> None:
    """TRIAGE_TESTING=1 only: slow down or kill this process while it scores a given exam,
    so tests can prove redelivery and the failed-after-three-worker-losses rule."""
    delay = float(os.environ.get("TRIAGE_TEST_SCORING_DELAY_SECONDS", "0") or 0)
    if delay:
        time.sleep(delay)
    if os.environ.get("TRIAGE_TEST_KILL_WORKER_ON_STUDY_UID") == claimed.study_instance_uid:
        log.warning("testing: killing the worker process while scoring",
                    extra={"study_instance_uid": claimed.study_instance_uid})
        os.kill(os.getpid(), signal.SIGKILL)


class OutputStage(Protocol):
    """What happens to a result besides the DB rows (``triage.delivery.Publisher``)."""

    def prepare(self, db: Database, study_id: int, result: ExamResult) -> Sequence[Any]:
        """Build and durably write the output objects (outside the transaction)."""

    def record(self, session: Session, study_id: int, run: ScoringRun,
               written: Sequence[Any]) -> int:
        """Record them (outbox rows) inside the transaction that marks the exam scored."""

    def after_commit(self, db: Database, study_id: int) -> None:
        """E.g. mark the exam delivered when the outputs need no sending."""


def process_study(db: Database, ensemble: Ensemble, study_id: int,
                  outputs: OutputStage | None = None) -> Outcome:
    """Claim, score, store, mark scored; idempotent and safe to redeliver."""
    try:
        claimed = claim(db, study_id)
    except OperationalError as exc:
        raise TransientError(f"database unavailable while claiming exam {study_id}: {exc.orig}") from exc
    if claimed is None:
        return Outcome.NOT_CLAIMABLE
    if ensemble.settings.testing:
        _inject_fault(claimed)
    log.info("scoring exam", extra={"study_instance_uid": claimed.study_instance_uid,
                                     "attempt": claimed.attempt, "views": len(claimed.images)})
    try:
        result = score_exam(claimed.images, ensemble, study_instance_uid=claimed.study_instance_uid,
                            partial=claimed.partial)
    except ScoringError as exc:
        with db.session() as session:
            study = session.get(Study, study_id)
            assert study is not None
            store_failed_run(session, study_id, ensemble.model_set_version,
                             instances_digest([i.sop_instance_uid for i in claimed.images]), str(exc))
            set_status(session, study, ExamStatus.FAILED, str(exc))
        log.error("exam failed", extra={"study_instance_uid": claimed.study_instance_uid,
                                         "error": str(exc)})
        return Outcome.FAILED
    written: Sequence[Any] = outputs.prepare(db, study_id, result) if outputs else ()
    try:
        with db.session() as session:
            study = session.get(Study, study_id, with_for_update=not db.is_sqlite)
            assert study is not None
            if study.status != ExamStatus.SCORING.value:
                return Outcome.ALREADY_DONE  # a concurrent delivery finished first
            run = store_result(session, study_id, result)
            if outputs is not None:
                session.flush()
                outputs.record(session, study_id, run, written)
            # the exam's chosen_set_digest stays the assembly's (what a later image is
            # compared with); the run records which instances it scored
            set_status(session, study, ExamStatus.SCORED,
                       f"score {result.exam_score:.4f}, category {result.category}")
    except OperationalError as exc:
        raise TransientError(f"database unavailable while storing exam {study_id}: {exc.orig}") from exc
    log.info("exam scored", extra={"study_instance_uid": claimed.study_instance_uid,
                                    "score": round(result.exam_score, 4),
                                    "category": result.category,
                                    "model_set_version": result.model_set_version})
    if outputs is not None:
        outputs.after_commit(db, study_id)
    return Outcome.SCORED


