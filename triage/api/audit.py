"""``GET /api/v1/audit`` (admins): who read score history and exam details, newest first."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query

from triage.api.auth import admin, database
from triage.api.problems import ADMIN_RESPONSES, PROBLEM_RESPONSES
from triage.api.schemas import AuditOut
from triage.db import Database
from triage.db.access import Access
from triage.db.query_audit import DEFAULT_AUDIT_PAGE, MAX_AUDIT_PAGE, list_queries

router = APIRouter(prefix="/api/v1", tags=["audit"],
                   responses={**PROBLEM_RESPONSES, **ADMIN_RESPONSES})


@router.get("/audit", response_model=AuditOut, summary="The query audit (admin tokens only)")
def get_audit(
    access: Access = Depends(admin),
    db: Database = Depends(database),
    who: str | None = Query(None, max_length=64, description="only this token name"),
    limit: int = Query(DEFAULT_AUDIT_PAGE, ge=1, le=MAX_AUDIT_PAGE),
    cursor: str | None = Query(None, max_length=400, description="next_cursor of the previous page"),
) -> dict[str, Any]:
    """Each score-history and exam query: when, who (token name, or cli:<user>), role,
    channel (api or cli), the filters given and how many rows it returned. Patient IDs in
    the filters are masked unless TRIAGE_API_SHOW_PATIENT_IDS=1."""
    with db.session() as session:
        page = list_queries(session, access, limit=limit, cursor=cursor, who=who)
    return page.to_dict()
