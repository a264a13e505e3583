"""What the outbox holds, and the admin's way to send refused objects again.

The sender (``triage.delivery``) marks an object ``failed`` when the archive refuses it
permanently (SOP class not supported, 0xA9xx, ...). Once the cause is fixed (the archive
now accepts the class, a destination was corrected), ``retry_failed`` puts those rows back
to ``pending`` with a fresh attempt count, and an audit event says who asked and why; the
running sender picks them up on its next poll.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from triage.db.models import AuditEvent, OutboxItem, Study
from triage.errors import UnknownStudy
from triage.vocabulary import OutboxStatus

EVENT_OUTBOX_RETRY = "outbox_retry"


@dataclass(frozen=True)
class OutboxEntry:
    study_instance_uid: str
    kind: str
    sop_instance_uid: str
    destination: str
    status: str
    attempts: int
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    sent_at: datetime | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _query(study_instance_uid: str | None,
           status: OutboxStatus | None) -> Select[OutboxItem, str]:
    query = select(OutboxItem, Study.study_instance_uid).join(Study,
                                                              Study.id == OutboxItem.study_id)
    if study_instance_uid:
        query = query.where(Study.study_instance_uid == study_instance_uid)
    if status is not None:
        query = query.where(OutboxItem.status == status.value)
    return query


def list_outbox(session: Session, *, study_instance_uid: str | None = None,
                status: OutboxStatus | None = None, limit: int = 500) -> list[OutboxEntry]:
    """Outbox rows, newest first."""
    rows = session.execute(_query(study_instance_uid, status)
                           .order_by(OutboxItem.id.desc()).limit(limit)).all()
    return [OutboxEntry(study_instance_uid=uid, kind=item.kind,
                        sop_instance_uid=item.sop_instance_uid, destination=item.destination,
                        status=item.status, attempts=item.attempts,
                        last_status_code=item.last_status_code, last_error=item.last_error,
                        created_at=item.created_at, sent_at=item.sent_at)
            for item, uid in rows]


def retry_failed(session: Session, *, study_instance_uid: str | None, reason: str,
                 now: datetime | None = None) -> int:
    """Put permanently refused rows (of one exam, or all) back to pending; returns how many.

    Does not commit. An unknown Study Instance UID is an error, so a typo is not mistaken
    for "nothing to retry".
    """
    now = now or datetime.now(UTC)
    if study_instance_uid and session.scalar(
            select(Study.id).where(Study.study_instance_uid == study_instance_uid)) is None:
        raise UnknownStudy(f"no exam with Study Instance UID {study_instance_uid}")
    items = [item for item, _ in session.execute(
        _query(study_instance_uid, OutboxStatus.FAILED).with_for_update()).all()]
    for item in items:
        session.add(AuditEvent(at=now, kind=EVENT_OUTBOX_RETRY, study_id=item.study_id,
                               sop_instance_uid=item.sop_instance_uid,
                               detail={"destination": item.destination, "kind": item.kind,
                                       "previous_error": item.last_error,
                                       "previous_attempts": item.attempts, "reason": reason}))
        item.status = OutboxStatus.PENDING.value
        item.attempts = 0
        item.next_attempt_at = now
    return len(items)
