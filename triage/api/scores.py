"""``GET /api/v1/scores/history``: :func:`triage.db.history.score_history` as JSON pages, or
every matching run as CSV (``?format=csv``, streamed a page per statement). Audited."""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterator
from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse

from triage.api.auth import caller, database, settings_of
from triage.api.problems import PROBLEM_RESPONSES, FieldError, Problem
from triage.api.schemas import HistoryOut
from triage.config import Settings
from triage.db import Database
from triage.db.access import Access
from triage.db.history import (
    DEFAULT_HISTORY_PAGE,
    MAX_HISTORY_PAGE,
    HistoryFilter,
    check_filter,
    csv_columns,
    csv_record,
    score_history,
    walk_history,
)
from triage.db.queries import category_order
from triage.db.query_audit import HISTORY_QUERY, record_query

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1", tags=["scores"], responses=PROBLEM_RESPONSES)


def _aware(name: str, value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise FieldError(name, "give a time with its UTC offset (e.g. 2026-01-31T08:00:00+00:00)")
    return value


def _csv_line(cells: list[str]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerow(cells)
    return buffer.getvalue()


@router.get(
    "/scores/history", response_model=HistoryOut, response_model_exclude_unset=True,
    summary="Finished scoring runs, newest first",
    responses={200: {"content": {"text/csv": {}},
                     "description": "a page of runs (JSON), or every matching run (format=csv)"},
               403: {"model": Problem, "description": "patient_id filter without the right to "
                                                      "see patient IDs"}},
)
def get_history(
    access: Access = Depends(caller),
    db: Database = Depends(database),
    settings: Settings = Depends(settings_of),
    since: datetime | None = Query(None, description="scored at or after (ISO 8601 with offset)"),
    until: datetime | None = Query(None, description="scored before (ISO 8601 with offset)"),
    accession: str | None = Query(None, max_length=64, description="an accession number"),
    patient_id: str | None = Query(None, max_length=64, description=(
        "admins only, when TRIAGE_API_SHOW_PATIENT_IDS=1")),
    model_set_version: str | None = Query(None, max_length=200),
    category: str | None = Query(None, max_length=32,
                                 description="a configured priority, PARTIAL or NOT TRIAGED"),
    min_score: float | None = Query(None, ge=0, le=1, description="exam score at least"),
    max_score: float | None = Query(None, ge=0, le=1, description="exam score at most"),
    limit: int = Query(DEFAULT_HISTORY_PAGE, ge=1, le=MAX_HISTORY_PAGE,
                       description="runs per page (JSON); CSV returns every matching run"),
    cursor: str | None = Query(None, max_length=400, description="next_cursor of the previous page"),
    format: Literal["json", "csv"] = Query("json", description="json (a page) or csv (all)"),
) -> Any:
    """Each run: Study Instance UID, accession numbers, model-set version, category, exam
    score, the ensemble's per-breast scores, when it was scored, verified and partial flags
    (patient ID only for admins with TRIAGE_API_SHOW_PATIENT_IDS=1). Scores of runs that
    are not verified are null for viewers. Every call is written to the query audit."""
    flt = HistoryFilter(
        since=_aware("since", since), until=_aware("until", until), accession=accession,
        patient_id=patient_id, model_set_version=model_set_version, category=category,
        min_score=min_score, max_score=max_score, limit=limit, cursor=cursor)
    categories = category_order([p.name for p in settings.priorities])
    check_filter(flt, access, categories)
    if format == "csv":
        return StreamingResponse(
            _stream_csv(db, flt, access, categories), media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="score-history.csv"'})
    with db.session() as session:
        page = score_history(session, flt, access, categories=categories)
        record_query(session, access, HISTORY_QUERY, flt.audit_filters(), rows=len(page.rows))
    log.info("score history read", extra={"who": access.who, "rows": len(page.rows)})
    return page.to_dict()


def _stream_csv(db: Database, flt: HistoryFilter, access: Access,
                categories: tuple[str, ...]) -> Iterator[str]:
    rows = 0
    try:
        yield _csv_line(list(csv_columns(access)))
        for row in walk_history(db.session, flt, access, categories=categories):
            rows += 1
            yield _csv_line(csv_record(row, access))
    finally:  # also when the client goes away: the audit says how many rows left
        with db.session() as session:
            filters = {k: v for k, v in flt.audit_filters().items() if k != "limit"}
            record_query(session, access, HISTORY_QUERY, {**filters, "format": "csv"}, rows=rows)
        log.info("score history exported", extra={"who": access.who, "rows": rows})
