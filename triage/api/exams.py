"""``GET /api/v1/exams/{study_uid}``: :func:`triage.db.exam_detail.exam_detail`, audited."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Depends, HTTPException
from fastapi import Path as PathParam

from triage.api.auth import caller, database
from triage.api.problems import PROBLEM_RESPONSES, Problem
from triage.db import Database
from triage.db.access import Access, redact
from triage.db.exam_detail import exam_detail
from triage.db.query_audit import EXAM_QUERY, record_query

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1", tags=["exams"], responses=PROBLEM_RESPONSES)

UID_PATTERN = r"^[0-9]+(\.[0-9]+)*$"


@router.get(
    "/exams/{study_uid}", summary="One exam: instances, runs, scores, outputs and deliveries",
    responses={404: {"model": Problem, "description": "no exam with this Study Instance UID"}},
)
def get_exam(
    study_uid: str = PathParam(..., max_length=64, pattern=UID_PATTERN,
                               description="Study Instance UID"),
    access: Access = Depends(caller),
    db: Database = Depends(database),
) -> dict[str, Any]:
    """Everything known about one exam (``triage.db.exam_detail.ExamDetail`` as JSON).

    Scores of runs that are not verified are null for viewers; patient IDs appear only for
    admins with TRIAGE_API_SHOW_PATIENT_IDS=1. Every call is written to the query audit.
    """
    with db.session() as session:
        detail = exam_detail(session, study_uid, include_patient_id=access.patient_ids)
        record_query(session, access, EXAM_QUERY, {"study_instance_uid": study_uid},
                     rows=0 if detail is None else 1)
    log.info("exam detail read", extra={"study_instance_uid": study_uid, "who": access.who,
                                        "found": detail is not None})
    if detail is None:
        raise HTTPException(status_code=404, detail=(
            f"no exam with Study Instance UID {study_uid!r} is known; GET /api/v1/worklist "
            "lists the exams"))
    data: dict[str, Any] = redact(detail.to_dict(), access)
    return data
