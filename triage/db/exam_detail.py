"""One exam in full, for an administrator: ``triage exams show`` and
``GET /api/v1/exams/{study_uid}`` both call :func:`exam_detail` (one implementation).

What it holds: the exam's header fields and status with the reasons it is held, skipped or
failed; its status history; every stored instance with its classification, calling AE and
flags; every scoring run (oldest first) with its members, its scores (member x view x breast;
member None is the ensemble) and the objects it produced with their delivery state per
destination; the exam's audit events.

Reading it costs one SQL statement per table (studies, status_changes, instances,
scoring_runs, run_members, scores, outbox, audit_events), whatever the number of runs: the
rows of the run tables are selected by the exam's id through a join, never run by run.

Privacy: patient names are never read. Patient IDs (the exam's, each instance's, those in
audit event details and those quoted in reasons, e.g. a patient identity conflict) are left
out unless ``include_patient_id`` is true; the caller decides who may see them.
"""

from __future__ import annotations

import dataclasses
import re
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from triage.db.models import (
    AuditEvent,
    Instance,
    OutboxItem,
    RunMember,
    Score,
    ScoringRun,
    StatusChange,
    Study,
)

#: what replaces a patient identifier that the caller did not ask for
HIDDEN = "(hidden)"


def _plain(value: Any) -> Any:
    """JSON-ready data: dataclasses as dicts, datetimes as ISO 8601, tuples as lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


class _JSONReady:
    def to_dict(self) -> dict[str, Any]:
        data = _plain(self)
        assert isinstance(data, dict)
        return data


@dataclass(frozen=True)
class StatusChangeDetail(_JSONReady):
    from_status: str | None
    to_status: str
    reason: str | None
    at: datetime


@dataclass(frozen=True)
class InstanceDetail(_JSONReady):
    """One stored version of a SOP Instance and how it was classified."""

    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str | None
    modality: str | None
    image_class: str
    laterality: str | None
    view: str | None
    scorable: bool
    reason: str | None  # why it is not scored (None when scorable)
    chosen: bool  # in the exam's chosen image set
    superseded: bool  # a later version of the same SOP Instance UID replaced it
    loopback: bool  # an object we made ourselves, come back through a routing rule
    lossy: bool
    version: int
    transfer_syntax_uid: str | None
    rows: int | None
    columns: int | None
    number_of_frames: int | None
    calling_ae: str | None
    received_at: datetime
    patient_id: str | None = None  # only when asked for
    issuer_of_patient_id: str | None = None


@dataclass(frozen=True)
class MemberDetail(_JSONReady):
    """A model of the run's ensemble, or one left out with the reason."""

    name: str
    version: str
    modality: str
    ensemble_weight: float
    weights_sha256: str | None
    weights_status: str
    included: bool
    failure_reason: str | None


@dataclass(frozen=True)
class ScoreDetail(_JSONReady):
    """A probability pair at one level. ``member`` None is the ensemble."""

    member: str | None
    level: str  # view | breast | exam
    laterality: str | None
    view: str | None
    sop_instance_uid: str | None
    p_benign: float | None  # None: not estimated by this member
    p_malignant: float


@dataclass(frozen=True)
class DeliveryDetail(_JSONReady):
    """Where one output goes and how far it got."""

    destination: str
    status: str  # pending | sent | failed (refused, with the archive's reason)
    attempts: int
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: datetime
    sent_at: datetime | None


@dataclass(frozen=True)
class OutputDetail(_JSONReady):
    """An object we produced (SR, CAD SR, overlay) and its delivery per destination."""

    kind: str
    sop_class_uid: str
    sop_instance_uid: str
    created_at: datetime
    deliveries: tuple[DeliveryDetail, ...]


@dataclass(frozen=True)
class RunDetail(_JSONReady):
    """One scoring of the exam's chosen image set by a model set."""

    id: int
    model_set_version: str
    instances_digest: str
    status: str
    verified: bool
    category: str | None
    exam_score: float | None
    partial: bool
    coverage_gaps: tuple[str, ...]
    not_triaged_reason: str | None
    error: str | None
    tta_samples: int
    tta_seed: int | None
    device: str | None
    timings: Mapping[str, float]
    notes: tuple[str, ...]
    started_at: datetime
    finished_at: datetime | None
    latest: bool  # the run that decides the exam's category (latest started)
    members: tuple[MemberDetail, ...]
    scores: tuple[ScoreDetail, ...]
    outputs: tuple[OutputDetail, ...]


@dataclass(frozen=True)
class AuditEventDetail(_JSONReady):
    at: datetime
    kind: str
    sop_instance_uid: str | None
    detail: Mapping[str, Any]


@dataclass(frozen=True)
class ExamDetail(_JSONReady):
    """Everything an admin needs about one exam. No patient names; patient IDs only when
    ``patient_id_included``."""

    study_instance_uid: str
    accession_numbers: tuple[str, ...]
    issuer_of_accession: str | None
    study_date: str | None
    study_time: str | None
    timezone_offset: str | None
    study_description: str | None
    procedure_codes: tuple[Any, ...]
    status: str
    partial: bool
    hold_reason: str | None
    skipped_reason: str | None
    failure_reason: str | None
    image_classes: tuple[str, ...]
    views: tuple[str, ...]  # chosen scorable views, e.g. ("L-CC", "L-MLO", "R-CC", "R-MLO")
    chosen_set_digest: str | None
    scoring_attempts: int
    worker_losses: int
    transient_retries: int
    reopen_count: int
    first_received_at: datetime
    last_received_at: datetime
    ready_at: datetime | None
    queued_at: datetime | None
    scored_at: datetime | None
    delivered_at: datetime | None
    status_history: tuple[StatusChangeDetail, ...]
    instances: tuple[InstanceDetail, ...]
    runs: tuple[RunDetail, ...]  # oldest first; the last is the latest
    outputs_without_run: tuple[OutputDetail, ...]
    audit_events: tuple[AuditEventDetail, ...]
    patient_id_included: bool
    patient_id: str | None = None
    issuer_of_patient_id: str | None = None

    @property
    def latest_run(self) -> RunDetail | None:
        return next((r for r in self.runs if r.latest), None)


# ---- patient identifiers ---------------------------------------------------------------

#: a Patient ID or its issuer quoted in a stored reason (``repr`` quoting, as the identity
#: checks write it: "Patient ID 'P1' (issuer 'HOSP')")
_QUOTED_ID = re.compile(r"""(Patient ID|issuer) ('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")""")
_NAME_KEYS = {"patientname", "patientsname", "othernames", "otherpatientnames"}
_ID_KEYS = {"patientid", "issuerofpatientid", "otherpatientids"}


def hide_patient_ids(text: str | None) -> str | None:
    """``text`` with each quoted Patient ID and issuer replaced by :data:`HIDDEN`."""
    if text is None:
        return None
    return _QUOTED_ID.sub(lambda m: f"{m.group(1)} {HIDDEN}", text)


def _key(text: str) -> str:
    return re.sub(r"[^a-z]", "", text.lower())


class _Privacy:
    def __init__(self, include_patient_id: bool) -> None:
        self.include_patient_id = include_patient_id

    def text(self, value: str | None) -> str | None:
        return value if self.include_patient_id else hide_patient_ids(value)

    def data(self, value: Any) -> Any:
        """Audit event details: patient names dropped, patient IDs hidden unless asked."""
        if isinstance(value, Mapping):
            out: dict[str, Any] = {}
            for k, v in value.items():
                key = _key(str(k))
                if key in _NAME_KEYS:
                    continue
                if key in _ID_KEYS and not self.include_patient_id:
                    out[str(k)] = None if v is None else HIDDEN
                else:
                    out[str(k)] = self.data(v)
            return out
        if isinstance(value, list | tuple):
            return [self.data(v) for v in value]
        if isinstance(value, str):
            return self.text(value)
        return value

    def identifier(self, value: str | None) -> str | None:
        return value if self.include_patient_id else None


# ---- the query -------------------------------------------------------------------------


def _find_study(session: Session, study_uid: str) -> Study | None:
    # a Study Instance UID split across grouping keys: the newest exam
    return session.scalars(
        select(Study).where(Study.study_instance_uid == study_uid)
        .order_by(Study.id.desc()).limit(1)
    ).first()


def _views(instances: list[Instance]) -> tuple[str, ...]:
    return tuple(sorted({f"{i.laterality}-{i.view}" for i in instances
                         if i.chosen and i.scorable and i.view and i.laterality}))


def _outputs(items: list[OutboxItem], privacy: _Privacy) -> tuple[OutputDetail, ...]:
    """Outbox rows (one per object and destination) grouped by object, in creation order."""
    by_uid: dict[str, list[OutboxItem]] = {}
    for item in items:
        by_uid.setdefault(item.sop_instance_uid, []).append(item)
    return tuple(
        OutputDetail(
            kind=rows[0].kind, sop_class_uid=rows[0].sop_class_uid,
            sop_instance_uid=uid, created_at=min(r.created_at for r in rows),
            deliveries=tuple(DeliveryDetail(
                destination=r.destination, status=r.status, attempts=r.attempts,
                last_status_code=r.last_status_code, last_error=privacy.text(r.last_error),
                next_attempt_at=r.next_attempt_at, sent_at=r.sent_at,
            ) for r in sorted(rows, key=lambda r: (r.destination, r.id))),
        )
        for uid, rows in by_uid.items()
    )


def exam_detail(session: Session, study_uid: str, *,
                include_patient_id: bool = False) -> ExamDetail | None:
    """The exam with Study Instance UID ``study_uid`` in full, or None when none is known.

    One statement per table, whatever the number of runs, members, scores and outputs.
    """
    study = _find_study(session, study_uid)
    if study is None:
        return None
    privacy = _Privacy(include_patient_id)
    sid = study.id
    changes = session.scalars(
        select(StatusChange).where(StatusChange.study_id == sid)
        .order_by(StatusChange.id)).all()  # the order they were made (clocks may differ)
    instances = list(session.scalars(
        select(Instance).where(Instance.study_id == sid)
        .order_by(Instance.received_at, Instance.id)))
    runs = session.scalars(
        select(ScoringRun).where(ScoringRun.study_id == sid)
        .order_by(ScoringRun.started_at, ScoringRun.id)).all()
    members: dict[int, list[RunMember]] = defaultdict(list)
    for m in session.scalars(
            select(RunMember).join(ScoringRun, ScoringRun.id == RunMember.run_id)
            .where(ScoringRun.study_id == sid).order_by(RunMember.id)):
        members[m.run_id].append(m)
    scores: dict[int, list[Score]] = defaultdict(list)
    for s in session.scalars(
            select(Score).join(ScoringRun, ScoringRun.id == Score.run_id)
            .where(ScoringRun.study_id == sid).order_by(Score.id)):
        scores[s.run_id].append(s)
    outbox: dict[int | None, list[OutboxItem]] = defaultdict(list)
    for item in session.scalars(
            select(OutboxItem).where(OutboxItem.study_id == sid)
            .order_by(OutboxItem.created_at, OutboxItem.id)):
        outbox[item.run_id].append(item)
    events = session.scalars(
        select(AuditEvent).where(AuditEvent.study_id == sid)
        .order_by(AuditEvent.id)).all()

    # the latest run is the one started last (as the worklist decides the category)
    latest_id = max(runs, key=lambda r: (r.started_at, r.id)).id if runs else None
    run_ids = {r.id for r in runs}
    return ExamDetail(
        study_instance_uid=study.study_instance_uid,
        accession_numbers=tuple(study.accession_numbers or ()),
        issuer_of_accession=study.issuer_of_accession,
        study_date=study.study_date, study_time=study.study_time,
        timezone_offset=study.timezone_offset, study_description=study.study_description,
        procedure_codes=tuple(study.procedure_codes or ()),
        status=study.status, partial=study.partial,
        hold_reason=privacy.text(study.hold_reason),
        skipped_reason=privacy.text(study.skip_reason),
        failure_reason=privacy.text(study.failure_reason),
        image_classes=tuple(study.image_classes or ()), views=_views(instances),
        chosen_set_digest=study.chosen_set_digest, scoring_attempts=study.scoring_attempts,
        worker_losses=study.worker_losses, transient_retries=study.transient_retries,
        reopen_count=study.reopen_count,
        first_received_at=study.first_received_at, last_received_at=study.last_received_at,
        ready_at=study.ready_at, queued_at=study.queued_at, scored_at=study.scored_at,
        delivered_at=study.delivered_at,
        status_history=tuple(StatusChangeDetail(
            from_status=c.from_status, to_status=c.to_status, reason=privacy.text(c.reason),
            at=c.at) for c in changes),
        instances=tuple(InstanceDetail(
            sop_instance_uid=i.sop_instance_uid, sop_class_uid=i.sop_class_uid,
            series_instance_uid=i.series_instance_uid, modality=i.modality,
            image_class=i.image_class, laterality=i.laterality, view=i.view,
            scorable=i.scorable, reason=privacy.text(i.reason), chosen=i.chosen,
            superseded=i.superseded, loopback=i.loopback, lossy=i.lossy, version=i.version,
            transfer_syntax_uid=i.transfer_syntax_uid, rows=i.rows, columns=i.columns,
            number_of_frames=i.number_of_frames, calling_ae=i.calling_ae,
            received_at=i.received_at, patient_id=privacy.identifier(i.patient_id),
            issuer_of_patient_id=privacy.identifier(i.issuer_of_patient_id),
        ) for i in instances),
        runs=tuple(RunDetail(
            id=r.id, model_set_version=r.model_set_version, instances_digest=r.instances_digest,
            status=r.status, verified=r.verified, category=r.category, exam_score=r.exam_score,
            partial=r.partial, coverage_gaps=tuple(r.coverage_gaps or ()),
            not_triaged_reason=privacy.text(r.not_triaged_reason), error=privacy.text(r.error),
            tta_samples=r.tta_samples, tta_seed=r.tta_seed, device=r.device,
            timings=dict(r.timings or {}),
            notes=tuple(str(n) for n in (r.details or {}).get("notes", ())),
            started_at=r.started_at, finished_at=r.finished_at, latest=r.id == latest_id,
            members=tuple(MemberDetail(
                name=m.name, version=m.version, modality=m.modality,
                ensemble_weight=m.ensemble_weight, weights_sha256=m.weights_sha256,
                weights_status=m.weights_status, included=m.included,
                failure_reason=privacy.text(m.failure_reason),
            ) for m in members[r.id]),
            scores=tuple(ScoreDetail(
                member=s.member, level=s.level, laterality=s.laterality, view=s.view,
                sop_instance_uid=s.sop_instance_uid, p_benign=s.p_benign,
                p_malignant=s.p_malignant,
            ) for s in scores[r.id]),
            outputs=_outputs(outbox[r.id], privacy),
        ) for r in runs),
        outputs_without_run=_outputs(
            [i for run_id, items in outbox.items() if run_id not in run_ids for i in items],
            privacy),
        audit_events=tuple(AuditEventDetail(
            at=e.at, kind=e.kind, sop_instance_uid=e.sop_instance_uid,
            detail=privacy.data(e.detail or {})) for e in events),
        patient_id_included=include_patient_id,
        patient_id=privacy.identifier(study.patient_id),
        issuer_of_patient_id=privacy.identifier(study.issuer_of_patient_id),
    )


__all__ = [
    "HIDDEN",
    "AuditEventDetail",
    "DeliveryDetail",
    "ExamDetail",
    "InstanceDetail",
    "MemberDetail",
    "OutputDetail",
    "RunDetail",
    "ScoreDetail",
    "StatusChangeDetail",
    "exam_detail",
    "hide_patient_ids",
]
