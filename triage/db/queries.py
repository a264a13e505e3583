"""Read-side query functions used by the CLI, the API and the dashboard."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import String, and_, case, cast, func, or_, select
from sqlalchemy.orm import Session, aliased

from triage.db.exam_detail import hide_patient_ids
from triage.db.models import Instance, ScoringRun, Study, utcnow
from triage.errors import TriageError
from triage.vocabulary import NOT_TRIAGED, PARTIAL, ExamStatus, RunStatus

# ---- exams list ----------------------------------------------------------------------
#
# ``triage exams list``: every exam (finished or not), newest activity first, with filters;
# three SQL statements whatever the page size (a count, the page with each exam's latest run
# and instance count, the chosen views of the exams on the page). One exam in full is
# ``triage.db.exam_detail.exam_detail``.

DEFAULT_EXAM_LIST = 200
MAX_EXAM_LIST = 10_000


class InvalidExamListRequest(TriageError):
    """An exams-list filter or limit that cannot be used; the message names the option."""


@dataclass(frozen=True)
class ExamSummary:
    """One exam in the exams list. Identifiers are UIDs and accession numbers, never names."""

    study_instance_uid: str
    accession_numbers: list[str]
    status: str
    partial: bool  # the exam is incomplete, or its latest run scored an incomplete exam
    skipped_reason: str | None
    failure_reason: str | None
    views: list[str]  # chosen scorable views, e.g. ["L-CC", "L-MLO", "R-CC", "R-MLO"]
    instance_count: int
    first_received_at: str
    last_received_at: str
    exam_score: float | None = None  # of the latest run (by start time)
    category: str | None = None  # of the latest run
    hold_reason: str | None = None  # why the exam is held (needs an admin)
    model_set_version: str | None = None  # of the latest run
    run_status: str | None = None  # of the latest run: succeeded | failed

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ExamList:
    """The exams that matched, newest activity first, at most ``limit`` of ``total``."""

    exams: tuple[ExamSummary, ...]
    total: int  # exams matching the filters
    limit: int

    @property
    def truncated(self) -> bool:
        return self.total > len(self.exams)

    def to_dict(self) -> dict[str, Any]:
        return {"exams": [e.to_dict() for e in self.exams], "total": self.total,
                "limit": self.limit, "truncated": self.truncated}


def _latest_run_id() -> Any:
    return (select(ScoringRun.id).where(ScoringRun.study_id == Study.id)
            .order_by(ScoringRun.started_at.desc(), ScoringRun.id.desc()).limit(1)
            .correlate(Study).scalar_subquery())


def list_exams(session: Session, *, since: datetime | None = None, status: str | None = None,
               category: str | None = None, model_set: str | None = None,
               accession: str | None = None, limit: int = DEFAULT_EXAM_LIST) -> ExamList:
    """Exams newest activity first (last image received), every status.

    ``since``: images received at or after this time; ``status``: an ExamStatus value;
    ``category``: the latest run's category as stored (a priority, PARTIAL, NOT TRIAGED);
    ``model_set``: exams with any run by this model-set version; ``accession``: exams with
    this accession number among theirs (exact). Filters are SQL expressions (bound values).
    Patient IDs quoted in reasons are hidden (``exam_detail`` shows them when asked).
    """
    if not 1 <= limit <= MAX_EXAM_LIST:
        raise InvalidExamListRequest(f"--limit {limit} is out of range: use 1 to {MAX_EXAM_LIST}")
    if status is not None and status not in _STATUSES:
        raise InvalidExamListRequest(
            f"--status {status!r} is not an exam status: use one of {', '.join(_STATUSES)}")
    if since is not None and since.tzinfo is None:
        raise InvalidExamListRequest("--since must be a timezone-aware time (e.g. UTC)")

    where: list[Any] = []
    if since is not None:
        where.append(Study.last_received_at >= since)
    if status is not None:
        where.append(Study.status == status)
    if accession:
        # accession_numbers is a JSON list: match one element exactly, quotes included
        where.append(cast(Study.accession_numbers, String).contains(json.dumps(accession),
                                                                    autoescape=True))
    if model_set:
        where.append(select(ScoringRun.id).where(
            ScoringRun.study_id == Study.id, ScoringRun.model_set_version == model_set,
        ).correlate(Study).exists())
    instance_count = (select(func.count(Instance.id)).where(Instance.study_id == Study.id)
                      .correlate(Study).scalar_subquery())
    exams = select(
        Study.id, Study.study_instance_uid, Study.accession_numbers, Study.status, Study.partial,
        Study.skip_reason, Study.failure_reason, Study.hold_reason, Study.first_received_at,
        Study.last_received_at, instance_count.label("instance_count"),
        _latest_run_id().label("run_id"),
    ).where(*where).subquery("exams")
    run = aliased(ScoringRun, name="latest_run")
    listed = (
        select(exams, run.exam_score, run.category, run.model_set_version,
               run.partial.label("run_partial"), run.status.label("run_status"))
        .select_from(exams).outerjoin(run, run.id == exams.c.run_id)
    )
    if category is not None:
        listed = listed.where(run.category == category)
    listed_sq = listed.subquery("listed")
    total = session.scalar(select(func.count()).select_from(listed_sq))
    rows = session.execute(
        select(listed_sq).order_by(listed_sq.c.last_received_at.desc(), listed_sq.c.id.desc())
        .limit(limit)).all()

    views: dict[int, set[str]] = {r.id: set() for r in rows}
    if rows:
        for study_id, laterality, view in session.execute(
                select(Instance.study_id, Instance.laterality, Instance.view).distinct().where(
                    Instance.study_id.in_(list(views)), Instance.chosen.is_(True),
                    Instance.scorable.is_(True), Instance.view.is_not(None),
                    Instance.laterality.is_not(None))):
            views[study_id].add(f"{laterality}-{view}")
    return ExamList(exams=tuple(ExamSummary(
        study_instance_uid=r.study_instance_uid,
        accession_numbers=list(r.accession_numbers or []),
        status=r.status, partial=bool(r.partial) or bool(r.run_partial),
        skipped_reason=hide_patient_ids(r.skip_reason),
        failure_reason=hide_patient_ids(r.failure_reason), views=sorted(views[r.id]),
        instance_count=int(r.instance_count or 0),
        first_received_at=r.first_received_at.isoformat(),
        last_received_at=r.last_received_at.isoformat(),
        exam_score=r.exam_score, category=r.category, hold_reason=hide_patient_ids(r.hold_reason),
        model_set_version=r.model_set_version, run_status=r.run_status,
    ) for r in rows), total=int(total or 0), limit=limit)


# ---- worklist ------------------------------------------------------------------------
#
# One query function for every face (CLI today, HTTP API later): a WorklistRequest in, a
# WorklistPage out, in two SQL statements whatever the size of the database (a count and
# the page; the latest run of each exam comes from a correlated subquery in the page query).

#: Delivered and skipped exams are finished: the worklist keeps them this long by default.
DEFAULT_RECENT = timedelta(hours=24)
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
_FINISHED = (ExamStatus.DELIVERED.value, ExamStatus.SKIPPED.value)
_WITH_RESULT = (ExamStatus.SCORED.value, ExamStatus.DELIVERED.value)
_STATUSES = tuple(s.value for s in ExamStatus)


class InvalidWorklistRequest(TriageError):
    """A worklist filter, page size or cursor that cannot be used; the message says why."""


@dataclass(frozen=True)
class WorklistRequest:
    """Which part of the worklist to read.

    Exams not finished (every status but delivered and skipped) are always candidates;
    delivered exams (by ``delivered_at``) and skipped ones (by ``last_received_at``) only
    when they finished at or after ``since`` (None: ``DEFAULT_RECENT`` before now).
    Page with ``cursor`` (the ``next_cursor`` of the previous page; stable while exams
    arrive) or ``offset`` (numbered pages), not both.
    """

    status: str | None = None  # one ExamStatus value
    category: str | None = None  # a configured priority name, PARTIAL or NOT TRIAGED
    since: datetime | None = None
    limit: int = DEFAULT_PAGE_SIZE
    cursor: str | None = None
    offset: int = 0
    study_instance_uid: str | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= MAX_PAGE_SIZE:
            raise InvalidWorklistRequest(
                f"page size {self.limit} is out of range: use 1 to {MAX_PAGE_SIZE}")
        if self.offset < 0:
            raise InvalidWorklistRequest(f"offset {self.offset} is negative")
        if self.cursor is not None and self.offset:
            raise InvalidWorklistRequest("give a cursor or an offset (page number), not both")
        if self.status is not None and self.status not in _STATUSES:
            raise InvalidWorklistRequest(
                f"unknown exam status {self.status!r}: use one of {', '.join(_STATUSES)}")
        if self.since is not None and self.since.tzinfo is None:
            raise InvalidWorklistRequest("since must be a timezone-aware time (e.g. UTC)")


@dataclass(frozen=True)
class WorklistEntry:
    """One exam on the worklist. Identifiers are UIDs and accession numbers, never names."""

    study_instance_uid: str
    accession_numbers: tuple[str, ...]
    status: str
    category: str  # a configured priority name, PARTIAL or NOT TRIAGED
    reason: str | None  # why not in a priority category (unscored, unverified, skipped, failed)
    score: float | None  # exam score of the latest run if it succeeded; admins only if NOT TRIAGED
    partial: bool  # the exam is incomplete, or its latest run scored an incomplete exam
    model_set_version: str | None  # of the latest run
    first_received_at: datetime
    last_received_at: datetime
    scored_at: datetime | None
    delivered_at: datetime | None
    failure_reason: str | None
    skip_reason: str | None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["accession_numbers"] = list(self.accession_numbers)
        return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in data.items()}


@dataclass(frozen=True)
class WorklistPage:
    """One page of the worklist and how to get the next one."""

    entries: tuple[WorklistEntry, ...]
    total: int  # entries matching the request's filters, over all pages
    has_more: bool
    next_cursor: str | None  # None on the last page
    since: datetime  # finished exams that finished before this are left out

    def to_dict(self) -> dict[str, Any]:
        return {"entries": [e.to_dict() for e in self.entries], "total": self.total,
                "has_more": self.has_more, "next_cursor": self.next_cursor,
                "since": self.since.isoformat()}


def category_order(priority_names: Sequence[str]) -> tuple[str, ...]:
    """Worklist categories in display order: the configured priorities, PARTIAL, NOT TRIAGED."""
    names = [n for n in dict.fromkeys(priority_names) if n not in (PARTIAL, NOT_TRIAGED)]
    return (*names, PARTIAL, NOT_TRIAGED)


def _encode_cursor(rank: int, received: datetime, study_id: int) -> str:
    raw = json.dumps([rank, received.isoformat(), study_id], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_cursor(text: str) -> tuple[int, datetime, int]:
    try:
        rank, received, study_id = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        at = datetime.fromisoformat(received)
        if isinstance(rank, int) and isinstance(study_id, int) and at.tzinfo is not None:
            return rank, at, study_id
    except (ValueError, TypeError):
        pass
    raise InvalidWorklistRequest(
        f"cursor {text!r} is not one this product gave: use next_cursor of the previous page, "
        "or leave it out for the first page")


def _not_triaged_reason(status: str, skip_reason: str | None, failure_reason: str | None,
                        hold_reason: str | None = None) -> str:
    if status == ExamStatus.HELD.value:  # the reason quotes patient IDs: not on a worklist
        return f"held for an admin: {hide_patient_ids(hold_reason)}"
    if status == ExamStatus.SKIPPED.value:
        return f"skipped: {skip_reason}"
    if status == ExamStatus.FAILED.value:
        return f"scoring failed: {failure_reason}"
    return f"not scored yet ({status})"


def worklist(session: Session, priority_names: Sequence[str],
             request: WorklistRequest | None = None, *, now: datetime | None = None) -> WorklistPage:
    """Exams by category (``category_order``), newest arrival first within a category.

    An exam has a priority category only when its status is scored or delivered and its
    latest run (by start time) succeeded with a configured priority (or PARTIAL); every
    other exam is NOT TRIAGED with the reason. Two statements, whatever the database size.
    """
    request = request or WorklistRequest()
    order = category_order(priority_names)
    if request.category is not None and request.category not in order:
        raise InvalidWorklistRequest(
            f"unknown worklist category {request.category!r}: use one of {', '.join(order)}")
    since = request.since or (now or utcnow()) - DEFAULT_RECENT

    latest_run_id = (
        select(ScoringRun.id).where(ScoringRun.study_id == Study.id)
        .order_by(ScoringRun.started_at.desc(), ScoringRun.id.desc()).limit(1)
        .correlate(Study).scalar_subquery()
    )
    finished_at = case(
        (Study.status == ExamStatus.DELIVERED.value,
         func.coalesce(Study.delivered_at, Study.last_received_at)),
        else_=Study.last_received_at,
    )
    shown = [or_(Study.status.not_in(_FINISHED), finished_at >= since)]
    if request.status is not None:
        shown.append(Study.status == request.status)
    if request.study_instance_uid is not None:
        shown.append(Study.study_instance_uid == request.study_instance_uid)
    exams = select(
        Study.id, Study.study_instance_uid, Study.accession_numbers, Study.status, Study.partial,
        Study.skip_reason, Study.failure_reason, Study.hold_reason, Study.first_received_at,
        Study.last_received_at,
        Study.scored_at, Study.delivered_at, latest_run_id.label("run_id"),
    ).where(*shown).subquery("exams")
    run = aliased(ScoringRun, name="latest_run")
    has_result = and_(run.status == RunStatus.SUCCEEDED.value, exams.c.status.in_(_WITH_RESULT))
    rank = case(*[(and_(has_result, run.category == name), i) for i, name in enumerate(order[:-1])],
                else_=len(order) - 1)
    ranked = (
        select(exams, rank.label("rank"), run.status.label("run_status"),
               run.category.label("run_category"), run.exam_score, run.not_triaged_reason,
               run.model_set_version, run.partial.label("run_partial"))
        .select_from(exams).outerjoin(run, run.id == exams.c.run_id).subquery("worklist")
    )
    in_category = [] if request.category is None else [ranked.c.rank == order.index(request.category)]
    if in_category:
        total = session.scalar(select(func.count()).select_from(ranked).where(*in_category))
    else:  # no run needed to count
        total = session.scalar(select(func.count()).select_from(Study).where(*shown))

    stmt = (
        select(ranked).where(*in_category)
        .order_by(ranked.c.rank, ranked.c.first_received_at.desc(), ranked.c.id.desc())
        .limit(request.limit + 1).offset(request.offset)
    )
    if request.cursor is not None:
        after_rank, after_received, after_id = _decode_cursor(request.cursor)
        stmt = stmt.where(or_(ranked.c.rank > after_rank, and_(ranked.c.rank == after_rank, or_(
            ranked.c.first_received_at < after_received,
            and_(ranked.c.first_received_at == after_received, ranked.c.id < after_id)))))
    rows = session.execute(stmt).all()
    has_more = len(rows) > request.limit
    rows = rows[:request.limit]

    entries = []
    for r in rows:
        category = order[r.rank]
        succeeded = r.run_status == RunStatus.SUCCEEDED.value
        if r.rank < len(order) - 2:
            reason = None
        elif succeeded and r.status in _WITH_RESULT:
            reason = r.not_triaged_reason if r.run_category == category else (
                f"the latest run's category {r.run_category!r} is not one of TRIAGE_PRIORITIES "
                f"({', '.join(order[:-2])})")
        else:
            reason = _not_triaged_reason(r.status, r.skip_reason, r.failure_reason, r.hold_reason)
        entries.append(WorklistEntry(
            study_instance_uid=r.study_instance_uid,
            accession_numbers=tuple(r.accession_numbers or ()), status=r.status,
            category=category, reason=reason,
            # a held exam's earlier result is in doubt until an admin resolves the hold
            score=r.exam_score if succeeded and r.status != ExamStatus.HELD.value else None,
            partial=bool(r.partial) or bool(r.run_partial), model_set_version=r.model_set_version,
            first_received_at=r.first_received_at, last_received_at=r.last_received_at,
            scored_at=r.scored_at, delivered_at=r.delivered_at,
            failure_reason=r.failure_reason, skip_reason=r.skip_reason,
        ))
    last = rows[-1] if rows else None
    return WorklistPage(
        entries=tuple(entries), total=int(total or 0), has_more=has_more,
        next_cursor=_encode_cursor(last.rank, last.first_received_at, last.id)
        if has_more and last is not None else None,
        since=since,
    )
