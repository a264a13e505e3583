"""Writing scoring runs: members, per-view / per-breast / exam scores, timings, failures."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from triage.db.models import RunMember, Score, ScoringRun, utcnow
from triage.results import ExamResult
from triage.vocabulary import RunStatus


def find_run(session: Session, study_id: int, model_set_version: str,
             instances_digest: str) -> ScoringRun | None:
    return session.scalars(select(ScoringRun).where(
        ScoringRun.study_id == study_id,
        ScoringRun.model_set_version == model_set_version,
        ScoringRun.instances_digest == instances_digest,
    )).first()


def store_result(session: Session, study_id: int, result: ExamResult) -> ScoringRun:
    """Store a finished run (idempotent: an existing run with the same key is returned).

    The caller commits, together with the exam's status change, so a crash leaves either
    both or neither.
    """
    existing = find_run(session, study_id, result.model_set_version, result.instances_digest)
    if existing is not None and existing.status == RunStatus.SUCCEEDED.value:
        return existing
    run = existing or ScoringRun(study_id=study_id, model_set_version=result.model_set_version,
                                 instances_digest=result.instances_digest)
    run.status = RunStatus.SUCCEEDED.value
    run.verified = result.verified
    run.exam_score = result.exam_score
    run.category = result.category
    run.not_triaged_reason = result.not_triaged_reason
    run.tta_samples = result.tta_samples
    run.tta_seed = result.tta_seed
    run.device = result.device
    run.timings = dict(result.timings)
    run.failures = [{"member": m.name, "reason": m.failure_reason}
                    for m in result.members if not m.included]
    run.details = {
        "scored_sop_instance_uids": list(result.scored_sop_instance_uids),
        "partial": result.partial,
        "notes": list(result.notes),
    }
    run.partial = result.partial
    run.coverage_gaps = list(result.coverage_gaps)
    run.error = None
    run.finished_at = utcnow()
    # when the scoring began (the row is written only once the result is stored)
    run.started_at = run.finished_at - timedelta(seconds=float(result.timings.get("total_s", 0.0)))
    session.add(run)
    session.flush()
    for m in result.members:
        session.add(RunMember(
            run_id=run.id, name=m.name, version=m.version, modality=m.modality,
            ensemble_weight=m.ensemble_weight, weights_sha256=m.weights_sha256,
            weights_status=m.weights_status.value, included=m.included,
            failure_reason=m.failure_reason,
        ))
    for v in result.views:
        session.add(Score(run_id=run.id, member=v.member, level="view",
                          laterality=v.laterality.value, view=v.view.value,
                          sop_instance_uid=v.sop_instance_uid, p_benign=v.p_benign,
                          p_malignant=v.p_malignant))
    for b in result.breasts:
        session.add(Score(run_id=run.id, member=None, level="breast", laterality=b.laterality.value,
                          p_benign=b.p_benign, p_malignant=b.p_malignant))
        for member, (pb, pm) in b.per_member.items():
            session.add(Score(run_id=run.id, member=member, level="breast",
                              laterality=b.laterality.value, p_benign=pb, p_malignant=pm))
    session.add(Score(run_id=run.id, member=None, level="exam", p_benign=None,
                      p_malignant=result.exam_score))
    return run


def store_failed_run(session: Session, study_id: int, model_set_version: str,
                     instances_digest: str, error: str) -> ScoringRun:
    """Record a run that could not produce a result (kept for the admin's history)."""
    run = find_run(session, study_id, model_set_version, instances_digest) or ScoringRun(
        study_id=study_id, model_set_version=model_set_version, instances_digest=instances_digest)
    if run.status == RunStatus.SUCCEEDED.value:
        return run
    run.status = RunStatus.FAILED.value
    run.error = error
    run.finished_at = utcnow()
    session.add(run)
    return run
