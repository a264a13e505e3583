"""Exam status changes: only the transitions of DESIGN.md, each one logged."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from triage.db.models import StatusChange, Study, utcnow
from triage.errors import InvalidTransition
from triage.vocabulary import ALLOWED_TRANSITIONS, ExamStatus, transition_allowed

_TIMESTAMP_FIELD = {
    ExamStatus.READY: "ready_at",
    ExamStatus.QUEUED: "queued_at",
    ExamStatus.SCORED: "scored_at",
    ExamStatus.DELIVERED: "delivered_at",
}


def set_status(
    session: Session,
    study: Study,
    new: ExamStatus,
    reason: str | None = None,
    *,
    now: datetime | None = None,
) -> None:
    """Move ``study`` to ``new`` and log it; raise InvalidTransition if not allowed.

    The caller commits. Setting the current status again is not a transition and is
    rejected too, so a retried step cannot log a change twice.
    """
    current = ExamStatus(study.status)
    if not transition_allowed(current, new):
        raise InvalidTransition(
            f"exam {study.study_instance_uid}: status {current.value} -> {new.value} is not "
            f"allowed (allowed from {current.value}: "
            f"{', '.join(sorted(s.value for s in ALLOWED_TRANSITIONS[current])) or 'none'})"
        )
    at = now or utcnow()
    study.status = new.value
    if new is ExamStatus.RECEIVING:
        study.reopen_count += 1
    field = _TIMESTAMP_FIELD.get(new)
    if field:
        setattr(study, field, at)
    if new is ExamStatus.FAILED:
        study.failure_reason = reason
    if new is ExamStatus.SKIPPED:
        study.skip_reason = reason
    if new is ExamStatus.HELD:
        study.hold_reason = reason
    if current is ExamStatus.SCORING:
        study.scoring_owner = None  # the scoring is over, whatever its end
    session.add(StatusChange(study_id=study.id, from_status=current.value, to_status=new.value,
                             reason=reason, at=at))

