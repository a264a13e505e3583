"""What the dashboard's history and system pages show, read with a bounded number of queries.

* ``score_series``: (scored time, exam score, model-set version, category, verified) of the
  latest succeeded run of each scoring in a period: the score distribution per week and per
  model set, the category rates over time, and the drift test (``triage.drift``) use it.
* ``system_status``: queue depth, scoring exams with their owner and last heartbeat, outbox
  backlog per destination, recent failures with reasons (exams and refused objects).

The listing of individual runs with filters and paging is ``triage.db.history``; these are
aggregates for charts and the operations view.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from triage.db.models import OutboxItem, ScoringRun, Study
from triage.vocabulary import ExamStatus, OutboxStatus, RunStatus

#: at most this many points per chart request (a year of a busy site is ~50,000 exams)
MAX_SERIES_POINTS = 200_000


@dataclass(frozen=True)
class ScorePoint:
    scored_at: datetime
    exam_score: float
    model_set_version: str
    category: str
    verified: bool


def score_series(session: Session, *, since: datetime | None = None,
                 until: datetime | None = None) -> list[ScorePoint]:
    """Every succeeded run finished in [since, until), oldest first (one statement)."""
    stmt = (select(ScoringRun.finished_at, ScoringRun.exam_score, ScoringRun.model_set_version,
                   ScoringRun.category, ScoringRun.verified)
            .where(ScoringRun.status == RunStatus.SUCCEEDED.value,
                   ScoringRun.exam_score.is_not(None), ScoringRun.finished_at.is_not(None))
            .order_by(ScoringRun.finished_at, ScoringRun.id).limit(MAX_SERIES_POINTS))
    if since is not None:
        stmt = stmt.where(ScoringRun.finished_at >= since)
    if until is not None:
        stmt = stmt.where(ScoringRun.finished_at < until)
    return [ScorePoint(at, float(score), version, category or "", bool(verified))
            for at, score, version, category, verified in session.execute(stmt)
            if at is not None and score is not None]  # both filtered in SQL already


@dataclass(frozen=True)
class ScoringWorker:
    """An exam being scored now and the worker that owns it."""

    study_instance_uid: str
    owner: str | None
    heartbeat_at: datetime | None
    attempts: int
    worker_losses: int


@dataclass(frozen=True)
class Backlog:
    destination: str
    pending: int
    failed: int
    oldest_pending: datetime | None


@dataclass(frozen=True)
class RecentFailure:
    at: datetime
    study_instance_uid: str
    what: str  # "exam failed", "exam held", "exam skipped" or "delivery refused"
    reason: str


@dataclass(frozen=True)
class SystemStatus:
    exams_by_status: dict[str, int]
    queue_depth: int  # ready + queued
    scoring: tuple[ScoringWorker, ...]
    backlog: tuple[Backlog, ...]
    failures: tuple[RecentFailure, ...]


def system_status(session: Session, *, failures: int = 20) -> SystemStatus:
    """The operations view (five statements, whatever the database size)."""
    by_status = {status: int(n) for status, n in session.execute(
        select(Study.status, func.count()).group_by(Study.status))}
    queue = sum(by_status.get(s.value, 0) for s in (ExamStatus.READY, ExamStatus.QUEUED))
    scoring = tuple(ScoringWorker(uid, owner, beat, attempts, losses)
                    for uid, owner, beat, attempts, losses in session.execute(
        select(Study.study_instance_uid, Study.scoring_owner, Study.heartbeat_at,
               Study.scoring_attempts, Study.worker_losses)
        .where(Study.status == ExamStatus.SCORING.value).order_by(Study.queued_at).limit(100)))
    rows = session.execute(
        select(OutboxItem.destination, OutboxItem.status, func.count(),
               func.min(OutboxItem.created_at))
        .where(OutboxItem.status.in_([OutboxStatus.PENDING.value, OutboxStatus.FAILED.value]))
        .group_by(OutboxItem.destination, OutboxItem.status)).all()
    backlog: dict[str, Backlog] = {}
    for destination, status, count, oldest in rows:
        b = backlog.get(destination) or Backlog(destination, 0, 0, None)
        if status == OutboxStatus.PENDING.value:
            b = Backlog(destination, int(count), b.failed, oldest)
        else:
            b = Backlog(destination, b.pending, int(count), b.oldest_pending)
        backlog[destination] = b
    exam_failures = [
        RecentFailure(at, uid, f"exam {status}", reason or "")
        for at, uid, status, reason in session.execute(
            select(Study.updated_at, Study.study_instance_uid, Study.status,
                   func.coalesce(Study.failure_reason, Study.hold_reason, Study.skip_reason))
            .where(Study.status.in_([ExamStatus.FAILED.value, ExamStatus.HELD.value]))
            .order_by(Study.updated_at.desc()).limit(failures))]
    refused = [
        RecentFailure(at, uid, "delivery refused", f"{destination}: {error or 'refused'}")
        for at, uid, destination, error in session.execute(
            select(OutboxItem.created_at, Study.study_instance_uid, OutboxItem.destination,
                   OutboxItem.last_error)
            .join(Study, Study.id == OutboxItem.study_id)
            .where(OutboxItem.status == OutboxStatus.FAILED.value)
            .order_by(OutboxItem.id.desc()).limit(failures))]
    merged: Sequence[RecentFailure] = sorted([*exam_failures, *refused], key=lambda f: f.at,
                                             reverse=True)[:failures]
    return SystemStatus(exams_by_status=by_status, queue_depth=queue, scoring=scoring,
                        backlog=tuple(sorted(backlog.values(), key=lambda b: b.destination)),
                        failures=tuple(merged))
