"""Named leases in the database: one sender and one reconciler act at a time.

A lease row names its holder and an expiry. Taking it succeeds when nobody holds it, the
holder is us (renewal), or it has expired (the holder died). The compare-and-set is a
single UPDATE ... WHERE, so it is atomic on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import or_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from triage.db.models import Lease, utcnow


def acquire_lease(session: Session, name: str, holder: str, ttl_seconds: float,
                  *, now: datetime | None = None) -> bool:
    """Take or renew lease ``name`` for ``holder``; commit; True when we hold it."""
    now = now or utcnow()
    expires = now + timedelta(seconds=ttl_seconds)
    result = session.execute(
        update(Lease)
        .where(Lease.name == name, or_(Lease.holder == holder, Lease.expires_at < now))
        .values(holder=holder, expires_at=expires)
    )
    if result.rowcount == 1:  # type: ignore[attr-defined]
        session.commit()
        return True
    if session.get(Lease, name) is not None:
        session.rollback()
        return False
    try:
        session.add(Lease(name=name, holder=holder, expires_at=expires))
        session.commit()
        return True
    except IntegrityError:  # another process created it first
        session.rollback()
        return False


def release_lease(session: Session, name: str, holder: str) -> None:
    lease = session.get(Lease, name)
    if lease is not None and lease.holder == holder:
        session.delete(lease)
        session.commit()
