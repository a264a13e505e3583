"""The output stage the pipeline calls (``triage.pipeline.OutputStage``).

Build + write before the commit (``build``), record the outbox rows inside the same
transaction as the run and the `scored` status (``outbox``), then mark local-folder
deliveries after the commit. Every step is idempotent: the UIDs are deterministic (keyed by
the content of the scored images), files are rewritten atomically and rows are keyed by
(SOP Instance UID, destination).
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from triage.config import Settings
from triage.db import Database, ScoringRun, Study
from triage.delivery.build import WrittenObject, write_outputs
from triage.delivery.outbox import mark_delivered, record_outbox
from triage.outputs import COMPREHENSIVE_3D_SR, MAMMOGRAPHY_CAD_SR, DocumentReference
from triage.results import ExamResult
from triage.vocabulary import OutputKind


def _predecessors(session: Session, study_id: int,
                  result: ExamResult) -> dict[OutputKind, DocumentReference]:
    """The SRs of the newest earlier run of this exam with another image set, per kind."""
    runs = session.scalars(select(ScoringRun).where(
        ScoringRun.study_id == study_id, ScoringRun.status == "succeeded",
        ScoringRun.instances_digest != result.instances_digest,
    ).order_by(ScoringRun.finished_at.desc(), ScoringRun.id.desc())).all()
    for run in runs:
        outputs = (run.details or {}).get("outputs", {})
        if outputs:
            classes = {OutputKind.SR_TID1500: COMPREHENSIVE_3D_SR,
                       OutputKind.SR_MAMMO_CAD: MAMMOGRAPHY_CAD_SR}
            return {kind: DocumentReference(ref["study"], ref["series"], ref["instance"], sop_class)
                    for kind, sop_class in classes.items()
                    if (ref := outputs.get(kind.value))}
    return {}



class Publisher:
    """Builds, records and marks the outputs of each scored exam."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def prepare(self, db: Database, study_id: int, result: ExamResult) -> list[WrittenObject]:
        with db.session() as session:
            study = session.get(Study, study_id)
            assert study is not None
            predecessors = _predecessors(session, study_id, result)
            study_uid = study.study_instance_uid
        return write_outputs(self.settings, result, predecessors,
                             self.settings.outputs_dir / study_uid)

    def record(self, session: Session, study_id: int, run: ScoringRun,
               written: Sequence[WrittenObject]) -> int:
        return record_outbox(session, self.settings, study_id, run, written)

    def after_commit(self, db: Database, study_id: int) -> None:
        mark_delivered(db, [study_id])
