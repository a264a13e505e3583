"""Outbox rows for a run's outputs, and `delivered` once every row reached its destination.

The rows (one per object and destination, keyed by (SOP Instance UID, destination)) are
written in the same transaction as the run and the `scored` status, so there is never a
scored exam without its outbox. With no destination configured the outputs directory is the
archive (the embedded default's "local folder"), and those rows are sent at once.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from triage.config import Settings
from triage.db import Database, OutboxItem, ScoringRun, Study
from triage.db.models import utcnow
from triage.db.states import set_status
from triage.delivery.build import WrittenObject
from triage.vocabulary import ExamStatus, OutboxStatus, OutputKind

LOCAL_DESTINATION = "local-folder"


def destinations(settings: Settings, kind: OutputKind, *, verified: bool) -> list[str]:
    """Where an output of ``kind`` goes. Shadow mode: a run whose weights are not all
    verified stays in the local outputs folder unless ``TRIAGE_SEND_UNVERIFIED`` is set."""
    if not verified and not settings.send_unverified:
        return [LOCAL_DESTINATION]
    group = "overlay" if kind is OutputKind.SC_OVERLAY else "sr"
    return [str(d) for d in settings.destinations(group)] or [LOCAL_DESTINATION]




def record_outbox(session: Session, settings: Settings, study_id: int, run: ScoringRun,
                  written: Sequence[WrittenObject]) -> int:
    """Outbox rows (one per object and destination) and the run's output references."""
    rows = 0
    outputs_detail = {}
    for obj in written:
        if obj.kind is not OutputKind.SC_OVERLAY:
            outputs_detail[obj.kind.value] = {"study": obj.study_instance_uid,
                                              "series": obj.series_instance_uid,
                                              "instance": obj.sop_instance_uid}
        for dest in destinations(settings, obj.kind, verified=run.verified):
            exists = session.scalars(select(OutboxItem.id).where(
                OutboxItem.sop_instance_uid == obj.sop_instance_uid,
                OutboxItem.destination == dest)).first()
            if exists is not None:
                continue
            local = dest == LOCAL_DESTINATION
            session.add(OutboxItem(
                study_id=study_id, run_id=run.id, kind=obj.kind.value,
                sop_class_uid=obj.sop_class_uid, sop_instance_uid=obj.sop_instance_uid,
                transfer_syntax_uid=obj.transfer_syntax_uid, path=str(obj.path),
                destination=dest,
                status=(OutboxStatus.SENT if local else OutboxStatus.PENDING).value,
                sent_at=utcnow() if local else None,
            ))
            rows += 1
    run.details = {**(run.details or {}), "outputs": outputs_detail,
                   "cad_sr_sent": OutputKind.SR_MAMMO_CAD.value in outputs_detail}
    return rows


def mark_delivered(db: Database, study_ids: Sequence[int]) -> list[int]:
    """scored -> delivered for exams whose latest run's objects all reached every destination."""
    done = []
    with db.session() as session:
        for study_id in set(study_ids):
            study = session.get(Study, study_id)
            if study is None or study.status != ExamStatus.SCORED.value:
                continue
            run = session.scalars(select(ScoringRun).where(
                ScoringRun.study_id == study_id, ScoringRun.status == "succeeded")
                .order_by(ScoringRun.finished_at.desc(), ScoringRun.id.desc())).first()
            if run is None:
                continue
            items = session.scalars(select(OutboxItem).where(OutboxItem.run_id == run.id)).all()
            if items and all(i.status == OutboxStatus.SENT.value for i in items):
                where = sorted({i.destination for i in items})
                set_status(session, study, ExamStatus.DELIVERED, f"results delivered to {', '.join(where)}")
                done.append(study_id)
    return done


