"""Database rows of whole exams for the exam-detail and exams-CLI tests: instances from a
modality, status history, scoring runs (a re-score among them) with members and member x view
x breast scores, outputs to two destinations, audit events."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session

from triage.db import (
    AuditEvent,
    Instance,
    OutboxItem,
    RunMember,
    Score,
    ScoringRun,
    StatusChange,
    Study,
)

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
MEMBERS = ("gmic-resnet18-1", "gmic-resnet18-2")
VIEWS = (("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO"))
PACS, VNA = "PACS@pacs:104", "VNA@vna:11112"
PATIENT_ID = "PID-7781-SECRET"
CALLING_AE = "MAMMO_ROOM2"


@dataclass(frozen=True)
class RunSpec:
    model_set: str = "ms-1"
    category: str | None = "HIGH"
    score: float | None = 0.71
    verified: bool = True
    status: str = "succeeded"
    partial: bool = False
    coverage_gaps: tuple[str, ...] = ()
    not_triaged_reason: str | None = None
    minutes: int = 10  # started this long after T0
    outputs: bool = True


def add_exam(session: Session, uid: str, runs: list[RunSpec], *, status: str = "delivered",
             accession: str = "ACC9", received: datetime = T0,
             hold_reason: str | None = None) -> int:
    """An exam with four chosen FFDM views and an unscorable CT image, its status history,
    ``runs`` (oldest first), each with two members and their scores, and for each run an SR
    to two destinations (PACS sent, VNA refused) plus one overlay; audit events."""
    study = Study(grouping_key=uid, study_instance_uid=uid, accession_numbers=[accession],
                  patient_id=PATIENT_ID, issuer_of_patient_id="HOSP", study_date="20260302",
                  study_time="075500", status=status, hold_reason=hold_reason,
                  image_classes=["ffdm", "other"], first_received_at=received,
                  last_received_at=received + timedelta(minutes=1),
                  scored_at=received + timedelta(minutes=5),
                  delivered_at=received + timedelta(minutes=6) if status == "delivered" else None)
    session.add(study)
    session.flush()
    for n, (lat, view) in enumerate(VIEWS):
        session.add(Instance(
            study_id=study.id, sop_instance_uid=f"{uid}.1.{n}", sop_class_uid="1.2.840.10008.5.1.4.1.1.1.2",
            image_class="ffdm", laterality=lat, view=view, scorable=True, chosen=True,
            path=f"/spool/{uid}/{n}", content_digest=f"{uid}-{n}", size_bytes=10,
            calling_ae=CALLING_AE, received_at=received + timedelta(seconds=n),
            patient_id=PATIENT_ID, issuer_of_patient_id="HOSP"))
    session.add(Instance(
        study_id=study.id, sop_instance_uid=f"{uid}.9", sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        image_class="other", scorable=False, reason="CT Image Storage is not a mammogram",
        path=f"/spool/{uid}/9", content_digest=f"{uid}-9", size_bytes=10,
        calling_ae=CALLING_AE, received_at=received + timedelta(seconds=9), patient_id=PATIENT_ID))
    for k, (a, b) in enumerate([(None, "receiving"), ("receiving", "ready"), ("ready", "queued"),
                                ("queued", "scoring"), ("scoring", "scored"),
                                ("scored", "delivered")]):
        session.add(StatusChange(study_id=study.id, from_status=a, to_status=b,
                                 reason="quiet period over" if b == "ready" else None,
                                 at=received + timedelta(seconds=30 + k)))
    for k, spec in enumerate(runs):
        started = received + timedelta(minutes=spec.minutes)
        run = ScoringRun(
            study_id=study.id, model_set_version=spec.model_set, instances_digest=f"digest-{k}",
            status=spec.status, verified=spec.verified, category=spec.category,
            exam_score=spec.score, partial=spec.partial, coverage_gaps=list(spec.coverage_gaps),
            not_triaged_reason=spec.not_triaged_reason, timings={"total_s": 1.5 + k},
            details={"notes": [f"note of run {k}"]}, device="cpu",
            started_at=started, finished_at=started + timedelta(seconds=2))
        session.add(run)
        session.flush()
        for m, name in enumerate(MEMBERS):
            session.add(RunMember(run_id=run.id, name=name, version="1.0", ensemble_weight=0.5,
                                  weights_sha256=f"{m}" * 64, weights_status="verified_published",
                                  included=True))
            for v, (lat, view) in enumerate(VIEWS):
                session.add(Score(run_id=run.id, member=name, level="view", laterality=lat,
                                  view=view, sop_instance_uid=f"{uid}.1.{v}",
                                  p_benign=0.1 + 0.01 * v, p_malignant=0.2 + 0.1 * m + 0.01 * v))
            for lat in "LR":
                session.add(Score(run_id=run.id, member=name, level="breast", laterality=lat,
                                  p_benign=0.15, p_malignant=0.3 + 0.1 * m))
        session.add(RunMember(run_id=run.id, name="dmv-cnn-image-only", version="1.0",
                              ensemble_weight=0.0, weights_status="imported_unverified",
                              included=False, failure_reason="the exam lacks R-MLO"))
        for lat in "LR":
            session.add(Score(run_id=run.id, member=None, level="breast", laterality=lat,
                              p_benign=0.15, p_malignant=0.35))
        if spec.score is not None:
            session.add(Score(run_id=run.id, member=None, level="exam", p_benign=None,
                              p_malignant=spec.score))
        if spec.outputs:
            sr = f"{uid}.500.{k}"
            for dest, state, error in ((PACS, "sent", None),
                                       (VNA, "failed", "0xA900 SOP class not supported")):
                session.add(OutboxItem(
                    study_id=study.id, run_id=run.id, kind="sr_tid1500",
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.88.34", sop_instance_uid=sr,
                    transfer_syntax_uid="1.2.840.10008.1.2.1", path=f"/out/{sr}.dcm",
                    destination=dest, status=state, attempts=1 if state == "sent" else 3,
                    last_status_code=0xA900 if error else 0, last_error=error,
                    created_at=started + timedelta(seconds=3),
                    sent_at=started + timedelta(seconds=4) if state == "sent" else None))
            session.add(OutboxItem(
                study_id=study.id, run_id=run.id, kind="sc_overlay",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.7", sop_instance_uid=f"{uid}.600.{k}",
                transfer_syntax_uid="1.2.840.10008.1.2.1", path=f"/out/{uid}.600.{k}.dcm",
                destination=PACS, status="pending", attempts=0,
                created_at=started + timedelta(seconds=3)))
    session.add(AuditEvent(at=received + timedelta(minutes=2), kind="patient_identity_conflict",
                           study_id=study.id, sop_instance_uid=f"{uid}.1.0",
                           detail={"conflict": "study_patient",
                                   "existing": {"patient_id": PATIENT_ID,
                                                "issuer_of_patient_id": "HOSP"},
                                   "incoming": {"patient_id": "OTHER-PID-42",
                                                "issuer_of_patient_id": None},
                                   "calling_ae": CALLING_AE}))
    session.add(AuditEvent(at=received + timedelta(minutes=30), kind="outbox_retry",
                           study_id=study.id, sop_instance_uid=f"{uid}.500.0",
                           detail={"destination": VNA, "reason": "VNA now accepts SR"}))
    session.flush()
    return study.id
