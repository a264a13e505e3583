"""The one-at-a-time sender: pending outbox rows -> C-STORE -> sent / retried / refused.

``OutboxSender`` (one per deployment at a time, a DB lease) sends pending rows with one
presentation context per transfer syntax, retries transient failures with exponential
backoff, records permanent refusals with their reason, and marks the exam `delivered`
once every object reached every destination.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter, defaultdict
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import select

from triage.config import Destination, Settings
from triage.db import Database, OutboxItem, Study
from triage.db.leases import acquire_lease
from triage.db.models import AuditEvent, utcnow
from triage.delivery.outbox import mark_delivered
from triage.dicom.sender import SendOutcome, send_files
from triage.vocabulary import OutboxStatus

log = logging.getLogger(__name__)

SENDER_LEASE = "sender"
MAX_BACKOFF_SECONDS = 300.0


def backoff_seconds(attempts: int) -> float:
    return float(min(MAX_BACKOFF_SECONDS, 2 ** max(0, attempts - 1)))


def send_pending(db: Database, settings: Settings, *, now: datetime | None = None,
                 holder: str = "sender") -> int:
    """One pass of the sender: send due rows, record outcomes; returns rows sent."""
    now = now or utcnow()
    with db.session() as session:
        if not acquire_lease(session, SENDER_LEASE, holder, ttl_seconds=120):
            return 0
        due = session.scalars(select(OutboxItem).where(
            OutboxItem.status == OutboxStatus.PENDING.value, OutboxItem.next_attempt_at <= now)
            .order_by(OutboxItem.id).limit(200)).all()
        by_dest: dict[str, list[tuple[int, Path]]] = defaultdict(list)
        for item in due:
            by_dest[item.destination].append((item.id, Path(item.path)))
    sent = 0
    touched: set[int] = set()
    outcomes: dict[int, Counter[str]] = defaultdict(Counter)  # study id -> outcome -> objects
    for dest_text, items in by_dest.items():
        results = send_files([p for _, p in items], Destination.parse(dest_text), settings.ae_title)
        with db.session() as session:
            for (item_id, _), res in zip(items, results, strict=True):
                row = session.get(OutboxItem, item_id)
                if row is None:
                    continue
                row.attempts += 1
                row.last_status_code = res.status
                touched.add(row.study_id)
                outcomes[row.study_id][res.outcome.value] += 1
                if res.outcome is SendOutcome.STORED:
                    row.status, row.sent_at, row.last_error = OutboxStatus.SENT.value, utcnow(), None
                    sent += 1
                elif res.outcome is SendOutcome.PERMANENT:
                    row.status, row.last_error = OutboxStatus.FAILED.value, res.message
                    session.add(AuditEvent(kind="delivery_refused", study_id=row.study_id,
                                           sop_instance_uid=row.sop_instance_uid,
                                           detail={"destination": dest_text, "status": res.status_text,
                                                   "reason": res.message}))
                else:
                    row.last_error = res.message
                    row.next_attempt_at = utcnow() + timedelta(seconds=backoff_seconds(row.attempts))
    _log_outcomes(db, outcomes)
    mark_delivered(db, sorted(touched))
    return sent


def _log_outcomes(db: Database, outcomes: dict[int, Counter[str]]) -> None:
    """One line per exam and pass, under its Study Instance UID (C-STORE lines name objects)."""
    if not outcomes:
        return
    with db.session() as session:
        uids = dict(session.execute(select(Study.id, Study.study_instance_uid)
                                    .where(Study.id.in_(outcomes))).tuples().all())
    for study_id, counts in outcomes.items():
        log.info("outbox objects sent, to retry or refused", extra={
            "study_instance_uid": uids.get(study_id), "outcomes": dict(counts)})


class OutboxSender(threading.Thread):
    """Runs ``send_pending`` every ``poll_seconds`` until stopped; never dies on an error."""

    def __init__(self, db: Database, settings: Settings, poll_seconds: float = 1.0) -> None:
        super().__init__(name="outbox-sender", daemon=True)
        self.db, self.settings, self.poll_seconds = db, settings, poll_seconds
        self.stop_event = threading.Event()
        self.holder = f"sender:{os.getpid()}"

    def stop(self) -> None:
        self.stop_event.set()

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                send_pending(self.db, self.settings, holder=self.holder)
            except Exception:
                log.exception("outbox sender pass failed; retrying")
            self.stop_event.wait(self.poll_seconds)
