"""Database: SQLAlchemy 2.0 models, session factory and query functions."""

from triage.db.models import (
    Association,
    AuditEvent,
    Base,
    Instance,
    Lease,
    OutboxItem,
    Quarantined,
    RunMember,
    Score,
    ScoringRun,
    StatusChange,
    Study,
)
from triage.db.session import Database, create_database

__all__ = [
    "Association",
    "AuditEvent",
    "Base",
    "Database",
    "Instance",
    "Lease",
    "OutboxItem",
    "Quarantined",
    "RunMember",
    "Score",
    "ScoringRun",
    "StatusChange",
    "Study",
    "create_database",
]
