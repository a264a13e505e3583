"""``GET /api/v1/worklist``: :func:`triage.db.queries.worklist`, a page at a time."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Query

from triage.api.auth import caller, database, settings_of
from triage.api.problems import PROBLEM_RESPONSES, FieldError
from triage.api.schemas import WorklistOut
from triage.config import Settings
from triage.db import Database, queries
from triage.db.access import Access, worklist_score_visible
from triage.db.queries import InvalidWorklistRequest, WorklistRequest
from triage.vocabulary import ExamStatus

router = APIRouter(prefix="/api/v1", tags=["worklist"], responses=PROBLEM_RESPONSES)

#: which parameter an InvalidWorklistRequest message is about (by its first words)
_FIELDS = (("cursor", "cursor"), ("unknown worklist category", "category"),
           ("unknown exam status", "status"), ("page size", "limit"), ("since", "since"))


def _field(message: str) -> str:
    return next((f for start, f in _FIELDS if message.startswith(start)), "query")


@router.get("/worklist", response_model=WorklistOut, summary="Exams by priority, then arrival")
def get_worklist(
    access: Access = Depends(caller),
    db: Database = Depends(database),
    settings: Settings = Depends(settings_of),
    status: ExamStatus | None = Query(None, description="only exams in this status"),
    category: str | None = Query(None, max_length=32, description=(
        "only this category: a configured priority, PARTIAL or NOT TRIAGED")),
    since: datetime | None = Query(None, description=(
        "delivered and skipped exams finished at or after this time (ISO 8601 with offset; "
        "default 24 h ago); unfinished exams are always listed")),
    limit: int = Query(queries.DEFAULT_PAGE_SIZE, ge=1, le=queries.MAX_PAGE_SIZE),
    cursor: str | None = Query(None, max_length=400, description="next_cursor of the previous page"),
) -> dict[str, Any]:
    if since is not None and since.tzinfo is None:
        raise FieldError("since", "give a time with its UTC offset (e.g. 2026-01-31T08:00:00+00:00)")
    try:
        request = WorklistRequest(status=status.value if status else None, category=category,
                                  since=since, limit=limit, cursor=cursor)
        with db.session() as session:
            page = queries.worklist(session, [p.name for p in settings.priorities], request)
    except InvalidWorklistRequest as exc:
        raise FieldError(_field(str(exc)), str(exc)) from exc
    data = page.to_dict()
    for entry in data["entries"]:
        if not worklist_score_visible(entry["category"], access):
            entry["score"] = None
    return data
