"""The query audit: every score-history and exam-detail query, who asked, when, with which
filters and how many rows it returned. Written by the API and the CLI; read by admins
(``GET /api/v1/audit``, ``triage audit``)."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from triage.db.access import PATIENT_ID_KEYS, Access
from triage.db.models import QueryAudit, utcnow
from triage.errors import TriageError

DEFAULT_AUDIT_PAGE = 100
MAX_AUDIT_PAGE = 1000

#: query names recorded in the audit
HISTORY_QUERY = "scores.history"
EXAM_QUERY = "exams.detail"


class InvalidAuditRequest(TriageError):
    """An audit page size or cursor that cannot be used."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class AuditEntry:
    at: datetime
    who: str
    role: str
    channel: str
    query: str
    filters: Mapping[str, Any]
    rows: int

    def to_dict(self) -> dict[str, Any]:
        return {"at": self.at.isoformat(), "who": self.who, "role": self.role,
                "channel": self.channel, "query": self.query, "filters": dict(self.filters),
                "rows": self.rows}


@dataclass(frozen=True)
class AuditPage:
    entries: tuple[AuditEntry, ...]
    has_more: bool
    next_cursor: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"entries": [e.to_dict() for e in self.entries], "has_more": self.has_more,
                "next_cursor": self.next_cursor}


def record_query(session: Session, access: Access, query: str, filters: Mapping[str, Any],
                 rows: int) -> None:
    """Add one audit row (the caller's transaction commits it with its read)."""
    session.add(QueryAudit(at=utcnow(), who=access.who[:64], role=access.role.value,
                           channel=access.channel, query=query,
                           filters={k: v for k, v in filters.items() if v is not None},
                           rows=rows))


def _encode(at: datetime, row_id: int) -> str:
    raw = json.dumps([at.isoformat(), row_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(text: str) -> tuple[datetime, int]:
    try:
        at, row_id = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        when = datetime.fromisoformat(at)
        if isinstance(row_id, int) and when.tzinfo is not None:
            return when, row_id
    except (ValueError, TypeError):
        pass
    raise InvalidAuditRequest("cursor", "not a cursor this product gave: use next_cursor of "
                                        "the previous page, or leave it out")


def list_queries(session: Session, access: Access, *, limit: int = DEFAULT_AUDIT_PAGE,
                 cursor: str | None = None, who: str | None = None) -> AuditPage:
    """Audit rows newest first, one page; patient IDs in the recorded filters are masked
    unless ``access`` may see patient IDs. One statement."""
    if not 1 <= limit <= MAX_AUDIT_PAGE:
        raise InvalidAuditRequest("limit", f"{limit} is out of range: use 1 to {MAX_AUDIT_PAGE}")
    stmt = select(QueryAudit).order_by(QueryAudit.at.desc(), QueryAudit.id.desc()).limit(limit + 1)
    if who is not None:
        stmt = stmt.where(QueryAudit.who == who)
    if cursor is not None:
        at, row_id = _decode(cursor)
        stmt = stmt.where(or_(QueryAudit.at < at, and_(QueryAudit.at == at, QueryAudit.id < row_id)))
    rows = list(session.scalars(stmt))
    has_more = len(rows) > limit
    rows = rows[:limit]
    entries = tuple(
        AuditEntry(at=r.at, who=r.who, role=r.role, channel=r.channel, query=r.query,
                   filters={k: ("***" if k in PATIENT_ID_KEYS and not access.patient_ids else v)
                            for k, v in (r.filters or {}).items()},
                   rows=r.rows)
        for r in rows)
    last = rows[-1] if rows else None
    return AuditPage(entries=entries, has_more=has_more,
                     next_cursor=_encode(last.at, last.id) if has_more and last else None)
