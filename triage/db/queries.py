"""Read-side query functions used by the CLI, the API and the dashboard."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from triage.db.models import Instance, ScoringRun, StatusChange, Study
from triage.errors import UnknownStudy


@dataclass(frozen=True)
class InstanceSummary:
    sop_instance_uid: str
    sop_class_uid: str
    image_class: str
    view: str | None
    laterality: str | None
    scorable: bool
    reason: str | None
    chosen: bool
    superseded: bool
    loopback: bool
    version: int
    received_at: str


@dataclass(frozen=True)
class ExamSummary:
    study_instance_uid: str
    accession_numbers: list[str]
    status: str
    partial: bool
    skipped_reason: str | None
    failure_reason: str | None
    views: list[str]  # chosen scorable views, e.g. ["L-CC", "L-MLO", "R-CC", "R-MLO"]
    instance_count: int
    first_received_at: str
    last_received_at: str
    exam_score: float | None = None
    category: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _views(instances: list[Instance]) -> list[str]:
    return sorted({f"{i.laterality}-{i.view}" for i in instances
                   if i.chosen and i.scorable and i.view and i.laterality})


def latest_run(session: Session, study_id: int) -> ScoringRun | None:
    return session.scalars(
        select(ScoringRun).where(ScoringRun.study_id == study_id)
        .order_by(ScoringRun.started_at.desc(), ScoringRun.id.desc()).limit(1)
    ).first()


def _summary(session: Session, study: Study) -> ExamSummary:
    instances = list(session.scalars(select(Instance).where(Instance.study_id == study.id)))
    run = latest_run(session, study.id)
    return ExamSummary(
        study_instance_uid=study.study_instance_uid,
        accession_numbers=list(study.accession_numbers or []),
        status=study.status,
        partial=study.partial,
        skipped_reason=study.skip_reason,
        failure_reason=study.failure_reason,
        views=_views(instances),
        instance_count=len(instances),
        first_received_at=study.first_received_at.isoformat(),
        last_received_at=study.last_received_at.isoformat(),
        exam_score=run.exam_score if run else None,
        category=run.category if run else None,
    )


def list_exams(session: Session, *, status: str | None = None, limit: int = 200) -> list[ExamSummary]:
    """Exams newest first."""
    stmt = select(Study).order_by(Study.last_received_at.desc(), Study.id.desc()).limit(limit)
    if status:
        stmt = stmt.where(Study.status == status)
    return [_summary(session, s) for s in session.scalars(stmt)]


def get_study(session: Session, study_instance_uid: str) -> Study:
    study = session.scalars(
        select(Study).where(Study.study_instance_uid == study_instance_uid)
        .order_by(Study.id.desc()).limit(1)
    ).first()
    if study is None:
        raise UnknownStudy(
            f"no exam with Study Instance UID {study_instance_uid!r} is known; "
            "`triage exams list` shows the exams received"
        )
    return study


def exam_detail(session: Session, study_instance_uid: str) -> dict[str, Any]:
    """Everything an admin needs about one exam, as plain data."""
    study = get_study(session, study_instance_uid)
    summary = _summary(session, study)
    instances = session.scalars(
        select(Instance).where(Instance.study_id == study.id).order_by(Instance.received_at, Instance.id)
    )
    detail = summary.to_dict()
    detail["patient_id"] = study.patient_id
    detail["issuer_of_patient_id"] = study.issuer_of_patient_id
    detail["study_date"] = study.study_date
    detail["study_time"] = study.study_time
    detail["timezone_offset"] = study.timezone_offset
    detail["image_classes"] = list(study.image_classes or [])
    detail["instances"] = [
        asdict(InstanceSummary(
            sop_instance_uid=i.sop_instance_uid, sop_class_uid=i.sop_class_uid,
            image_class=i.image_class, view=i.view, laterality=i.laterality,
            scorable=i.scorable, reason=i.reason, chosen=i.chosen, superseded=i.superseded,
            loopback=i.loopback, version=i.version, received_at=i.received_at.isoformat(),
        ))
        for i in instances
    ]
    detail["status_history"] = [
        {"from": c.from_status, "to": c.to_status, "reason": c.reason, "at": c.at.isoformat()}
        for c in session.scalars(
            select(StatusChange).where(StatusChange.study_id == study.id).order_by(StatusChange.id)
        )
    ]
    return detail


@dataclass(frozen=True)
class WorklistEntry:
    study_instance_uid: str
    accession_numbers: list[str]
    status: str
    category: str  # a priority name, or NOT TRIAGED
    reason: str | None  # why NOT TRIAGED (unscored, unverified weights, skipped, failed)
    score: float | None  # visible to admins even when NOT TRIAGED
    first_received_at: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def worklist(session: Session, priority_names: list[str], *, limit: int = 500) -> list[WorklistEntry]:
    """Exams by priority (configured order, NOT TRIAGED last), then by arrival (oldest first)."""
    entries = []
    studies = session.scalars(select(Study).order_by(Study.first_received_at, Study.id).limit(limit))
    for study in studies:
        run = latest_run(session, study.id)
        scored = run is not None and run.status == "succeeded" and study.status in ("scored", "delivered")
        if scored and run is not None and run.category in priority_names:
            category, reason = str(run.category), None
        elif scored and run is not None:
            category, reason = "NOT TRIAGED", run.not_triaged_reason
        else:
            category = "NOT TRIAGED"
            reason = {
                "skipped": f"skipped: {study.skip_reason}",
                "failed": f"scoring failed: {study.failure_reason}",
            }.get(study.status, f"not scored yet ({study.status})")
        entries.append(WorklistEntry(
            study_instance_uid=study.study_instance_uid,
            accession_numbers=list(study.accession_numbers or []), status=study.status,
            category=category, reason=reason,
            score=run.exam_score if run is not None and run.status == "succeeded" else None,
            first_received_at=study.first_received_at.isoformat(),
        ))
    rank = {name: i for i, name in enumerate(priority_names)}
    return sorted(entries, key=lambda e: (rank.get(e.category, len(rank)), e.first_received_at))
