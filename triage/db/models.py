"""SQLAlchemy 2.0 ORM models. Every timestamp is stored in UTC.

Keep this file and ``migrations/versions`` in step: a test compares the migrated schema
with these models on SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy import false as sa_false
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from triage.vocabulary import ExamStatus


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column; use datetime.now(UTC)")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dict[str, Any]: JSON, list[Any]: JSON, datetime: UTCDateTime,
    }


class Study(Base):
    """An exam: the unit that is assembled, scored and delivered."""

    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    grouping_key: Mapped[str] = mapped_column(String(200), unique=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    accession_numbers: Mapped[list[Any]] = mapped_column(default=list)
    issuer_of_accession: Mapped[str | None] = mapped_column(String(64))
    patient_id: Mapped[str | None] = mapped_column(String(64))
    issuer_of_patient_id: Mapped[str | None] = mapped_column(String(64))
    study_date: Mapped[str | None] = mapped_column(String(8))
    study_time: Mapped[str | None] = mapped_column(String(16))
    timezone_offset: Mapped[str | None] = mapped_column(String(5))
    study_description: Mapped[str | None] = mapped_column(String(200))
    procedure_codes: Mapped[list[Any]] = mapped_column(default=list)
    status: Mapped[str] = mapped_column(String(16), default=ExamStatus.RECEIVING.value, index=True)
    partial: Mapped[bool] = mapped_column(Boolean, default=False)
    skip_reason: Mapped[str | None] = mapped_column(Text)
    failure_reason: Mapped[str | None] = mapped_column(Text)
    image_classes: Mapped[list[Any]] = mapped_column(default=list)
    chosen_set_digest: Mapped[str | None] = mapped_column(String(64))
    scoring_attempts: Mapped[int] = mapped_column(Integer, default=0)  # deliveries claimed
    #: the worker scoring it now (host:pid:random) and its last sign of life
    scoring_owner: Mapped[str | None] = mapped_column(String(128))
    heartbeat_at: Mapped[datetime | None] = mapped_column()
    #: deliveries that ended with the worker lost (counts toward `failed`) and transient
    #: errors retried (DB or archive briefly down; never counted as worker loss)
    worker_losses: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    transient_retries: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    hold_reason: Mapped[str | None] = mapped_column(Text)
    reopen_count: Mapped[int] = mapped_column(Integer, default=0)
    first_received_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_received_at: Mapped[datetime] = mapped_column(default=utcnow)
    ready_at: Mapped[datetime | None] = mapped_column()
    queued_at: Mapped[datetime | None] = mapped_column()
    scored_at: Mapped[datetime | None] = mapped_column()
    delivered_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    instances: Mapped[list[Instance]] = relationship(back_populates="study")
    runs: Mapped[list[ScoringRun]] = relationship(back_populates="study")


class Association(Base):
    """A DICOM association that sent (or tried to send) instances."""

    __tablename__ = "associations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    calling_ae: Mapped[str] = mapped_column(String(16))
    called_ae: Mapped[str] = mapped_column(String(16))
    peer_address: Mapped[str] = mapped_column(String(64))
    peer_port: Mapped[int] = mapped_column(Integer, default=0)
    listener_pid: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column()
    is_open: Mapped[bool] = mapped_column(Boolean, default=True, index=True)
    end_reason: Mapped[str | None] = mapped_column(String(32))
    instances_received: Mapped[int] = mapped_column(Integer, default=0)


class Instance(Base):
    """One received and stored version of a SOP Instance."""

    __tablename__ = "instances"
    __table_args__ = (
        UniqueConstraint("sop_instance_uid", "content_digest", name="uq_instance_version"),
        Index("ix_instances_study_chosen", "study_id", "chosen"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    association_id: Mapped[int | None] = mapped_column(ForeignKey("associations.id"))
    sop_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    series_instance_uid: Mapped[str | None] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str | None] = mapped_column(String(64))
    modality: Mapped[str | None] = mapped_column(String(16))
    image_class: Mapped[str] = mapped_column(String(16))
    view: Mapped[str | None] = mapped_column(String(8))
    laterality: Mapped[str | None] = mapped_column(String(1))
    scorable: Mapped[bool] = mapped_column(Boolean, default=False)
    reason: Mapped[str | None] = mapped_column(Text)
    chosen: Mapped[bool] = mapped_column(Boolean, default=False)
    superseded: Mapped[bool] = mapped_column(Boolean, default=False)
    loopback: Mapped[bool] = mapped_column(Boolean, default=False)
    lossy: Mapped[bool] = mapped_column(Boolean, default=False)
    version: Mapped[int] = mapped_column(Integer, default=1)
    path: Mapped[str] = mapped_column(Text)
    content_digest: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    rows: Mapped[int | None] = mapped_column(Integer)
    columns: Mapped[int | None] = mapped_column(Integer)
    number_of_frames: Mapped[int | None] = mapped_column(Integer)
    acquisition_datetime: Mapped[str | None] = mapped_column(String(32))
    calling_ae: Mapped[str | None] = mapped_column(String(16))
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    patient_id: Mapped[str | None] = mapped_column(String(64))
    issuer_of_patient_id: Mapped[str | None] = mapped_column(String(64))

    study: Mapped[Study] = relationship(back_populates="instances")


class Quarantined(Base):
    """Input that could not be accepted; its bytes are kept under quarantine/."""

    __tablename__ = "quarantine"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    status_code: Mapped[int] = mapped_column(Integer)
    calling_ae: Mapped[str | None] = mapped_column(String(16))
    peer_address: Mapped[str | None] = mapped_column(String(64))
    sop_class_uid: Mapped[str | None] = mapped_column(String(64))
    sop_instance_uid: Mapped[str | None] = mapped_column(String(64))
    study_instance_uid: Mapped[str | None] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)


class ScoringRun(Base):
    """One scoring of an exam's chosen image set by a model set."""

    __tablename__ = "scoring_runs"
    __table_args__ = (
        UniqueConstraint("study_id", "model_set_version", "instances_digest", name="uq_run_key"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    model_set_version: Mapped[str] = mapped_column(String(200))
    instances_digest: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    verified: Mapped[bool] = mapped_column(Boolean, default=False)
    exam_score: Mapped[float | None] = mapped_column(Float)
    category: Mapped[str | None] = mapped_column(String(32))
    not_triaged_reason: Mapped[str | None] = mapped_column(Text)
    tta_samples: Mapped[int] = mapped_column(Integer, default=0)
    tta_seed: Mapped[int | None] = mapped_column(Integer)
    device: Mapped[str | None] = mapped_column(String(32))
    timings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    failures: Mapped[list[Any]] = mapped_column(default=list)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column()
    #: the run lacks coverage (a breast or standard view missing, a view or member failed)
    partial: Mapped[bool] = mapped_column(Boolean, default=False, server_default=sa_false())
    coverage_gaps: Mapped[list[Any]] = mapped_column(default=list, server_default="[]")

    study: Mapped[Study] = relationship(back_populates="runs")
    members: Mapped[list[RunMember]] = relationship(back_populates="run")
    scores: Mapped[list[Score]] = relationship(back_populates="run")


class RunMember(Base):
    """A model that took part in a run (or was left out, with the reason)."""

    __tablename__ = "run_members"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("scoring_runs.id"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(64))
    modality: Mapped[str] = mapped_column(String(16), default="ffdm")
    ensemble_weight: Mapped[float] = mapped_column(Float)
    weights_sha256: Mapped[str | None] = mapped_column(String(64))
    weights_status: Mapped[str] = mapped_column(String(32))
    included: Mapped[bool] = mapped_column(Boolean, default=True)
    failure_reason: Mapped[str | None] = mapped_column(Text)

    run: Mapped[ScoringRun] = relationship(back_populates="members")


class Score(Base):
    """A probability pair at one level: view (per member), breast (per member or ensemble)."""

    __tablename__ = "scores"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("scoring_runs.id"), index=True)
    member: Mapped[str | None] = mapped_column(String(64))  # None = ensemble
    level: Mapped[str] = mapped_column(String(8))  # view | breast | exam
    laterality: Mapped[str | None] = mapped_column(String(1))
    view: Mapped[str | None] = mapped_column(String(8))
    sop_instance_uid: Mapped[str | None] = mapped_column(String(64))
    p_benign: Mapped[float | None] = mapped_column(Float)
    p_malignant: Mapped[float] = mapped_column(Float)

    run: Mapped[ScoringRun] = relationship(back_populates="scores")


class OutboxItem(Base):
    """An object that must leave us: a row first, then the send, then the mark."""

    __tablename__ = "outbox"
    __table_args__ = (UniqueConstraint("sop_instance_uid", "destination", name="uq_outbox"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("scoring_runs.id"))
    kind: Mapped[str] = mapped_column(String(16))
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    destination: Mapped[str] = mapped_column(String(120))
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column()


class AuditEvent(Base):
    """Something an admin may need to trace later (duplicates, re-opens, refusals...)."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    kind: Mapped[str] = mapped_column(String(48), index=True)
    study_id: Mapped[int | None] = mapped_column(ForeignKey("studies.id"))
    sop_instance_uid: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


class StatusChange(Base):
    """The log of every exam status transition."""

    __tablename__ = "status_changes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(default=utcnow)


class Lease(Base):
    """A named lock with an expiry, so one sender and one reconciler act at a time."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[datetime] = mapped_column()


#: score history reads runs newest first by the time they were scored (triage/db/history.py)
Index("ix_scoring_runs_finished_at", ScoringRun.finished_at)


class ApiToken(Base):
    """An API token: a name, a role and the sha256 of its secret (the secret is never stored).

    Revoked tokens stay (revoked_at set) so audit rows keep naming who they were.
    """

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    secret_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str | None] = mapped_column(String(64))
    revoked_at: Mapped[datetime | None] = mapped_column()


class QueryAudit(Base):
    """Who read score history or an exam's detail, when, with which filters, how many rows."""

    __tablename__ = "query_audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    who: Mapped[str] = mapped_column(String(64), index=True)  # token name, or cli:<os user>
    role: Mapped[str] = mapped_column(String(16))
    channel: Mapped[str] = mapped_column(String(16))  # api | cli | dashboard
    query: Mapped[str] = mapped_column(String(48))  # e.g. scores.history, exams.detail
    filters: Mapped[dict[str, Any]] = mapped_column(default=dict)
    rows: Mapped[int] = mapped_column(Integer, default=0)
