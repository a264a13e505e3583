"""Score history: every finished scoring run, newest first, filtered and a page at a time.

The one implementation behind ``GET /api/v1/scores/history`` (JSON and CSV) and
``triage scores history``. Built from SQLAlchemy expressions only (every value a caller
gives is a bound parameter), in two statements per page whatever the size of the database:
the page of runs (joined to their exam) and the ensemble's per-breast scores of those runs.

Which runs: those that finished successfully (a failed run has no score). Order: the time a
run was scored (``finished_at``), newest first, then the run's id; the cursor is that pair,
so pages stay stable while new runs arrive (new runs sort before the first page).

What a caller sees follows :mod:`triage.db.access`: patient IDs only when it may see them
(and only then may it filter by patient ID); scores of runs that are not verified only for
admins (a viewer's score-range filter then matches verified runs only, so the filter cannot
reveal a hidden score).
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import String, and_, cast, or_, select
from sqlalchemy.orm import Session

from triage.db.access import Access
from triage.db.models import Score, ScoringRun, Study
from triage.errors import TriageError
from triage.vocabulary import RunStatus

DEFAULT_HISTORY_PAGE = 100
MAX_HISTORY_PAGE = 1000
#: rows per statement when a whole result is streamed (CSV)
STREAM_PAGE = 500
_TEXT_LIMITS = {"accession": 64, "patient_id": 64, "model_set_version": 200, "category": 32,
                "study_instance_uid": 64}


class InvalidHistoryFilter(TriageError):
    """A score-history filter that cannot be used; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class HistoryAccessDenied(TriageError):
    """The caller asked for something its role or the settings do not allow."""


@dataclass(frozen=True)
class HistoryFilter:
    """Which runs to read. Every field is optional; ``limit`` is the page size.

    ``since`` / ``until``: scored at or after / before (timezone-aware). ``accession``
    matches any of the exam's accession numbers exactly; ``patient_id`` and
    ``model_set_version`` and ``category`` match exactly; ``min_score`` / ``max_score``
    bound the exam score (inclusive). ``cursor``: ``next_cursor`` of the previous page.
    """

    since: datetime | None = None
    until: datetime | None = None
    accession: str | None = None
    patient_id: str | None = None
    model_set_version: str | None = None
    category: str | None = None
    min_score: float | None = None
    max_score: float | None = None
    study_instance_uid: str | None = None
    limit: int = DEFAULT_HISTORY_PAGE
    cursor: str | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= MAX_HISTORY_PAGE:
            raise InvalidHistoryFilter("limit", f"{self.limit} is out of range: use 1 to "
                                                f"{MAX_HISTORY_PAGE}")
        for name in ("since", "until"):
            value: datetime | None = getattr(self, name)
            if value is not None and value.tzinfo is None:
                raise InvalidHistoryFilter(name, "give a time with its UTC offset "
                                                 "(e.g. 2026-01-31T08:00:00+00:00)")
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise InvalidHistoryFilter("until", "must be later than since")
        for name in ("min_score", "max_score"):
            score: float | None = getattr(self, name)
            if score is not None and not (math.isfinite(score) and 0.0 <= score <= 1.0):
                raise InvalidHistoryFilter(name, f"{score} is not a score: use 0 to 1")
        if (self.min_score is not None and self.max_score is not None
                and self.min_score > self.max_score):
            raise InvalidHistoryFilter("max_score", "must be at least min_score")
        for name, limit in _TEXT_LIMITS.items():
            text: str | None = getattr(self, name)
            if text is None:
                continue
            if not text.strip():
                raise InvalidHistoryFilter(name, "is empty: leave it out to match every run")
            if len(text) > limit or any(ord(c) < 32 for c in text):
                raise InvalidHistoryFilter(name, f"must be at most {limit} printable characters")
        if self.cursor is not None:
            _decode_cursor(self.cursor)

    def audit_filters(self) -> dict[str, Any]:
        """The filters given (for the query audit), times as ISO strings."""
        out: dict[str, Any] = {}
        for name in ("since", "until", "accession", "patient_id", "model_set_version",
                     "category", "min_score", "max_score", "study_instance_uid", "cursor"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value.isoformat() if isinstance(value, datetime) else value
        out["limit"] = self.limit
        return out


@dataclass(frozen=True)
class BreastScore:
    """The ensemble's probabilities for one breast (``p_benign`` None: not estimated)."""

    laterality: str  # L | R
    p_malignant: float | None
    p_benign: float | None


@dataclass(frozen=True)
class HistoryRow:
    """One scoring run. Identifiers are UIDs and accession numbers; ``patient_id`` is None
    unless the caller may see patient IDs; scores are None where the caller may not see them."""

    study_instance_uid: str
    accession_numbers: tuple[str, ...]
    patient_id: str | None
    model_set_version: str
    category: str | None
    exam_score: float | None
    breast_scores: tuple[BreastScore, ...]
    scored_at: datetime
    verified: bool
    partial: bool
    not_triaged_reason: str | None

    def breast(self, laterality: str) -> BreastScore | None:
        return next((b for b in self.breast_scores if b.laterality == laterality), None)

    def to_dict(self, *, with_patient_id: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "study_instance_uid": self.study_instance_uid,
            "accession_numbers": list(self.accession_numbers),
            "model_set_version": self.model_set_version, "category": self.category,
            "exam_score": self.exam_score,
            "breast_scores": [{"laterality": b.laterality, "p_malignant": b.p_malignant,
                               "p_benign": b.p_benign} for b in self.breast_scores],
            "scored_at": self.scored_at.isoformat(), "verified": self.verified,
            "partial": self.partial, "not_triaged_reason": self.not_triaged_reason,
        }
        if with_patient_id:
            data["patient_id"] = self.patient_id
        return data


@dataclass(frozen=True)
class HistoryPage:
    rows: tuple[HistoryRow, ...]
    has_more: bool
    next_cursor: str | None  # None on the last page
    patient_ids_shown: bool = field(default=False)

    def to_dict(self) -> dict[str, Any]:
        return {"rows": [r.to_dict(with_patient_id=self.patient_ids_shown) for r in self.rows],
                "has_more": self.has_more, "next_cursor": self.next_cursor}


def _encode_cursor(scored_at: datetime, run_id: int) -> str:
    raw = json.dumps([scored_at.isoformat(), run_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(text: str) -> tuple[datetime, int]:
    try:
        at, run_id = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        when = datetime.fromisoformat(at)
        if isinstance(run_id, int) and when.tzinfo is not None:
            return when, run_id
    except (ValueError, TypeError):
        pass
    raise InvalidHistoryFilter("cursor", "not a cursor this product gave: use next_cursor "
                                         "of the previous page, or leave it out")


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _accession_matches(accession: str) -> Any:
    """Any of the exam's accession numbers equals ``accession``.

    The numbers are a JSON list; both SQLite and PostgreSQL keep the JSON text the product
    wrote (``json.dumps``), so the quoted, JSON-escaped number is searched for in that text
    with LIKE, its wildcards escaped: a portable exact element match, bound as a parameter.
    """
    needle = "%" + _like_escape(json.dumps(accession)) + "%"
    return cast(Study.accession_numbers, String).like(needle, escape="\\")


def check_filter(flt: HistoryFilter, access: Access,
                 categories: Sequence[str] | None = None) -> None:
    """Refuse what ``access`` may not ask (HistoryAccessDenied) and a category this site
    does not use (InvalidHistoryFilter); :func:`score_history` checks the same."""
    if flt.patient_id is not None and not access.patient_ids:
        raise HistoryAccessDenied(
            "filtering by patient ID needs an admin token and TRIAGE_API_SHOW_PATIENT_IDS=1")
    if categories is not None and flt.category is not None and flt.category not in categories:
        raise InvalidHistoryFilter("category", f"unknown category {flt.category!r}: use one of "
                                               f"{', '.join(categories)}")


def score_history(session: Session, flt: HistoryFilter, access: Access, *,
                  categories: Sequence[str] | None = None) -> HistoryPage:
    """One page of finished runs matching ``flt``, as ``access`` may see them.

    ``categories``: the categories this site uses (configured priorities, PARTIAL,
    NOT TRIAGED); a ``category`` filter outside it is refused (a typo would match nothing).
    """
    check_filter(flt, access, categories)
    where: list[Any] = [ScoringRun.status == RunStatus.SUCCEEDED.value,
                        ScoringRun.finished_at.is_not(None)]
    if flt.since is not None:
        where.append(ScoringRun.finished_at >= flt.since)
    if flt.until is not None:
        where.append(ScoringRun.finished_at < flt.until)
    if flt.model_set_version is not None:
        where.append(ScoringRun.model_set_version == flt.model_set_version)
    if flt.category is not None:
        where.append(ScoringRun.category == flt.category)
    if flt.min_score is not None:
        where.append(ScoringRun.exam_score >= flt.min_score)
    if flt.max_score is not None:
        where.append(ScoringRun.exam_score <= flt.max_score)
    if (flt.min_score is not None or flt.max_score is not None) and not access.unverified_scores:
        where.append(ScoringRun.verified.is_(True))
    if flt.study_instance_uid is not None:
        where.append(Study.study_instance_uid == flt.study_instance_uid)
    if flt.patient_id is not None:
        where.append(Study.patient_id == flt.patient_id)
    if flt.accession is not None:
        where.append(_accession_matches(flt.accession))
    if flt.cursor is not None:
        after_at, after_id = _decode_cursor(flt.cursor)
        where.append(or_(ScoringRun.finished_at < after_at,
                         and_(ScoringRun.finished_at == after_at, ScoringRun.id < after_id)))

    stmt = (
        select(ScoringRun.id, ScoringRun.model_set_version, ScoringRun.category,
               ScoringRun.exam_score, ScoringRun.finished_at, ScoringRun.verified,
               ScoringRun.partial, ScoringRun.not_triaged_reason, Study.study_instance_uid,
               Study.accession_numbers, Study.patient_id)
        .join(Study, Study.id == ScoringRun.study_id)
        .where(*where)
        .order_by(ScoringRun.finished_at.desc(), ScoringRun.id.desc())
        .limit(flt.limit + 1)
    )
    rows = session.execute(stmt).all()
    has_more = len(rows) > flt.limit
    rows = rows[:flt.limit]

    breasts: dict[int, list[BreastScore]] = {}
    if rows:
        for s in session.execute(
            select(Score.run_id, Score.laterality, Score.p_malignant, Score.p_benign)
            .where(Score.run_id.in_([r.id for r in rows]), Score.level == "breast",
                   Score.member.is_(None))
            .order_by(Score.run_id, Score.laterality)
        ):
            breasts.setdefault(s.run_id, []).append(
                BreastScore(laterality=s.laterality or "?", p_malignant=s.p_malignant,
                            p_benign=s.p_benign))

    out = []
    for r in rows:
        shown = bool(r.verified) or access.unverified_scores
        scores = tuple(breasts.get(r.id, ()))
        if not shown:
            scores = tuple(replace(b, p_malignant=None, p_benign=None) for b in scores)
        out.append(HistoryRow(
            study_instance_uid=r.study_instance_uid,
            accession_numbers=tuple(r.accession_numbers or ()),
            patient_id=r.patient_id if access.patient_ids else None,
            model_set_version=r.model_set_version, category=r.category,
            exam_score=r.exam_score if shown else None, breast_scores=scores,
            scored_at=r.finished_at, verified=bool(r.verified), partial=bool(r.partial),
            not_triaged_reason=r.not_triaged_reason,
        ))
    last = rows[-1] if rows else None
    return HistoryPage(
        rows=tuple(out), has_more=has_more,
        next_cursor=_encode_cursor(last.finished_at, last.id) if has_more and last else None,
        patient_ids_shown=access.patient_ids,
    )


def walk_history(sessions: Callable[[], AbstractContextManager[Session]], flt: HistoryFilter,
                 access: Access, *, categories: Sequence[str] | None = None,
                 page_size: int = STREAM_PAGE) -> Iterator[HistoryRow]:
    """Every run matching ``flt`` from its cursor on, a page per short session (for CSV)."""
    page_flt = replace(flt, limit=page_size)
    while True:
        with sessions() as session:
            page = score_history(session, page_flt, access, categories=categories)
        yield from page.rows
        if page.next_cursor is None:
            return
        page_flt = replace(page_flt, cursor=page.next_cursor)


# ---- CSV -------------------------------------------------------------------------------

_CSV_COLUMNS = ("study_instance_uid", "accession_numbers", "patient_id", "model_set_version",
                "category", "exam_score", "left_p_malignant", "left_p_benign",
                "right_p_malignant", "right_p_benign", "scored_at", "verified", "partial",
                "not_triaged_reason")


def csv_columns(access: Access) -> tuple[str, ...]:
    """Column names of the CSV export; ``patient_id`` only for callers who may see it."""
    return tuple(c for c in _CSV_COLUMNS if c != "patient_id" or access.patient_ids)


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    text = str(value)
    # a spreadsheet would run a cell that starts like a formula: keep it text
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def csv_record(row: HistoryRow, access: Access) -> list[str]:
    """One CSV record in the order of ``csv_columns(access)``."""
    left, right = row.breast("L"), row.breast("R")
    values: dict[str, object] = {
        "study_instance_uid": row.study_instance_uid,
        "accession_numbers": ";".join(row.accession_numbers),
        "patient_id": row.patient_id, "model_set_version": row.model_set_version,
        "category": row.category, "exam_score": row.exam_score,
        "left_p_malignant": left.p_malignant if left else None,
        "left_p_benign": left.p_benign if left else None,
        "right_p_malignant": right.p_malignant if right else None,
        "right_p_benign": right.p_benign if right else None,
        "scored_at": row.scored_at.isoformat(), "verified": row.verified,
        "partial": row.partial, "not_triaged_reason": row.not_triaged_reason,
    }
    return [_cell(values[c]) for c in csv_columns(access)]
