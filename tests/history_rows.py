"""Finished scoring runs in bulk for the score-history, API and CLI tests: one exam per
distinct Study Instance UID, one run per spec, the ensemble's per-breast scores."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from triage.db import Score, ScoringRun, Study

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
INJECTIONS = ("' OR 1=1 --", '"; DROP TABLE studies; --', "%", "_", "\\", "ACC1%' OR 'a'='a")


@dataclass(frozen=True)
class RunRow:
    uid: str
    score: float = 0.3
    category: str | None = "MEDIUM"
    verified: bool = True
    partial: bool = False
    model_set: str = "ms-1"
    accessions: tuple[str, ...] | None = None  # default: ("A" + uid,)
    patient_id: str | None = None  # default: "P" + uid
    minutes_ago: float = 10.0  # scored this long before NOW
    status: str = "succeeded"


def add_runs(session: Session, rows: list[RunRow], *, now: datetime = NOW) -> None:
    """Insert the exams (new UIDs only), runs and breast scores in three executemany INSERTs
    (ids from the database, so PostgreSQL's sequences stay right)."""
    known = {uid: sid for uid, sid in session.execute(select(Study.study_instance_uid, Study.id))}
    studies: list[dict[str, Any]] = []
    for r in rows:
        if r.uid in known or any(s["study_instance_uid"] == r.uid for s in studies):
            continue
        studies.append({
            "grouping_key": r.uid, "study_instance_uid": r.uid,
            "accession_numbers": list(r.accessions if r.accessions is not None else ("A" + r.uid,)),
            "patient_id": r.patient_id if r.patient_id is not None else "P" + r.uid,
            "status": "delivered", "first_received_at": now - timedelta(hours=1),
            "last_received_at": now - timedelta(hours=1),
        })
    if studies:
        created = session.execute(
            insert(Study).returning(Study.study_instance_uid, Study.id, sort_by_parameter_order=True),
            studies)
        known.update({uid: sid for uid, sid in created})
    runs: list[dict[str, Any]] = []
    for r in rows:
        scored = now - timedelta(minutes=r.minutes_ago)
        runs.append({
            "study_id": known[r.uid], "model_set_version": r.model_set,
            "instances_digest": uuid.uuid4().hex, "status": r.status,
            "verified": r.verified, "exam_score": r.score, "category": r.category,
            "partial": r.partial,
            "not_triaged_reason": None if r.verified else "weights not verified",
            "started_at": scored - timedelta(minutes=1),
            "finished_at": scored if r.status == "succeeded" else None,
        })
    if not runs:
        return
    run_ids = list(session.scalars(
        insert(ScoringRun).returning(ScoringRun.id, sort_by_parameter_order=True), runs))
    scores: list[dict[str, Any]] = []
    for run_id, r in zip(run_ids, rows, strict=True):
        scores += [
            {"run_id": run_id, "member": None, "level": "breast", "laterality": "L",
             "p_malignant": r.score, "p_benign": round(r.score / 2, 6)},
            {"run_id": run_id, "member": None, "level": "breast", "laterality": "R",
             "p_malignant": round(r.score / 3, 6), "p_benign": None},
            {"run_id": run_id, "member": "m1", "level": "breast", "laterality": "L",
             "p_malignant": 0.99, "p_benign": 0.99},
        ]
    session.execute(insert(Score), scores)
