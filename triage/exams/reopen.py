"""Re-open rules: only a scorable instance that changes the chosen set moves a scored,
delivered, failed or skipped exam back to ``receiving``. One that arrives while the exam is
ready, queued or scoring is stored unchosen with a ``chosen_set_change_pending`` audit event;
when the exam reaches scored/delivered/failed, the readiness pass applies the change and
re-opens it."""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import exists, select
from sqlalchemy.orm import Session, aliased

from triage.db.models import AuditEvent, Study
from triage.db.states import set_status
from triage.exams.chosen import apply_chosen, chosen_winners, set_digest, study_instances
from triage.vocabulary import ExamStatus

logger = logging.getLogger(__name__)

REOPENABLE = frozenset(
    {ExamStatus.SCORED, ExamStatus.DELIVERED, ExamStatus.FAILED, ExamStatus.SKIPPED}
)
IN_FLIGHT = frozenset({ExamStatus.READY, ExamStatus.QUEUED, ExamStatus.SCORING})
EVENT_REOPENED = "exam_reopened"
EVENT_PENDING_CHANGE = "chosen_set_change_pending"
EVENT_PENDING_RESOLVED = "chosen_set_change_resolved"


def reopen(session: Session, study: Study, reason: str, now: datetime,
            sop_instance_uid: str | None) -> None:
    previous = study.status
    set_status(session, study, ExamStatus.RECEIVING, reason, now=now)
    study.skip_reason = None
    study.partial = False
    session.add(AuditEvent(at=now, kind=EVENT_REOPENED, study_id=study.id,
                           sop_instance_uid=sop_instance_uid,
                           detail={"from_status": previous, "reason": reason,
                                   "chosen_set_digest": study.chosen_set_digest}))
    logger.info("exam re-opened", extra={"study_instance_uid": study.study_instance_uid,
                                         "sop_instance_uid": sop_instance_uid})



def pending_change_study_ids(session: Session) -> list[int]:
    pending = aliased(AuditEvent)
    resolved = aliased(AuditEvent)
    query = select(Study.id).where(
        Study.status.in_([ExamStatus.SCORED.value, ExamStatus.DELIVERED.value,
                          ExamStatus.FAILED.value]),
        exists().where(
            pending.study_id == Study.id,
            pending.kind == EVENT_PENDING_CHANGE,
            Study.ready_at.is_not(None),
            pending.at >= Study.ready_at,
            ~exists().where(resolved.study_id == Study.id,
                            resolved.kind == EVENT_PENDING_RESOLVED,
                            resolved.at >= pending.at),
        ),
    )
    return list(session.scalars(query))


def apply_pending(session: Session, study: Study, now: datetime) -> bool:
    if ExamStatus(study.status) not in REOPENABLE - {ExamStatus.SKIPPED}:
        return False
    instances = study_instances(session, study.id)
    if set_digest(chosen_winners(instances)) != study.chosen_set_digest:
        apply_chosen(session, study, instances, now)
        reopen(session, study, "re-opened: images that arrived while the exam was being "
                "scored change the chosen set", now, None)
        return True
    session.add(AuditEvent(at=now, kind=EVENT_PENDING_RESOLVED, study_id=study.id,
                           detail={"result": "chosen set unchanged"}))
    return False
