"""Rows of DICOM associations: opened, closed, and the ones a restarted listener left open."""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from triage.db.models import Association, AuditEvent

logger = logging.getLogger(__name__)

EVENT_STALE_ASSOCIATIONS = "stale_associations_closed"


def open_association(session: Session, *, calling_ae: str, called_ae: str, peer_address: str,
                     peer_port: int, now: datetime | None = None,
                     listener_pid: int | None = None) -> int:
    """Record an accepted association; returns its id (flushed, not committed)."""
    row = Association(calling_ae=calling_ae[:16], called_ae=called_ae[:16],
                      peer_address=peer_address[:64], peer_port=peer_port,
                      listener_pid=os.getpid() if listener_pid is None else listener_pid,
                      started_at=now or datetime.now(UTC), is_open=True)
    session.add(row)
    session.flush()
    return row.id


def close_association(session: Session, association_id: int, reason: str, *,
                      now: datetime | None = None) -> None:
    """Mark an association ended (released, aborted, ...). Does not commit."""
    row = session.get(Association, association_id)
    if row is None:
        logger.warning("close of unknown association %s ignored", association_id)
        return
    row.is_open = False
    row.ended_at = now or datetime.now(UTC)
    row.end_reason = reason[:32]


def close_stale_associations(session: Session, reason: str = "listener restarted", *,
                             now: datetime | None = None) -> int:
    """At listener start-up: close every association still marked open. Does not commit."""
    at = now or datetime.now(UTC)
    ids = list(session.scalars(select(Association.id).where(Association.is_open.is_(True))))
    if not ids:
        return 0
    session.execute(update(Association).where(Association.id.in_(ids))
                    .values(is_open=False, ended_at=at, end_reason=reason[:32]))
    session.add(AuditEvent(at=at, kind=EVENT_STALE_ASSOCIATIONS,
                           detail={"association_ids": ids, "reason": reason}))
    return len(ids)

