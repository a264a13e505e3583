"""Finished scoring runs in bulk for the score-history, API and CLI tests: one exam per
distinct Study Instance UID, one run per spec, the ensemble's per-breast scores."""

from __future__ import annotations

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
    """Insert the exams (new UIDs only), runs and breast scores in three executemany INSERTs."""
    known = {uid: sid for uid, sid in session.execute(select(Study.study_instance_uid, Study.id))}
    next_id = max(known.values(), default=0) + 1
    first_run = (session.scalar(select(ScoringRun.id).order_by(ScoringRun.id.desc()).limit(1))
                 or 0) + 1
    studies: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    scores: list[dict[str, Any]] = []
    for n, r in enumerate(rows):
        if r.uid not in known:
            known[r.uid] = next_id
            next_id += 1
            studies.append({
                "id": known[r.uid], "grouping_key": r.uid, "study_instance_uid": r.uid,
                "accession_numbers": list(r.accessions if r.accessions is not None else ("A" + r.uid,)),
                "patient_id": r.patient_id if r.patient_id is not None else "P" + r.uid,
                "status": "delivered", "first_received_at": now - timedelta(hours=1),
                "last_received_at": now - timedelta(hours=1),
            })
        scored = now - timedelta(minutes=r.minutes_ago)
        run_id = first_run + n
        runs.append({
            "id": run_id, "study_id": known[r.uid], "model_set_version": r.model_set,
            "instances_digest": f"d{run_id}", "status": r.status, "verified": r.verified,
            "exam_score": r.score, "category": r.category, "partial": r.partial,
            "not_triaged_reason": None if r.verified else "weights not verified",
            "started_at": scored - timedelta(minutes=1),
            "finished_at": scored if r.status == "succeeded" else None,
        })
        scores += [
            {"run_id": run_id, "member": None, "level": "breast", "laterality": "L",
             "p_malignant": r.score, "p_benign": round(r.score / 2, 6)},
            {"run_id": run_id, "member": None, "level": "breast", "laterality": "R",
             "p_malignant": round(r.score / 3, 6), "p_benign": None},
            {"run_id": run_id, "member": "m1", "level": "breast", "laterality": "L",
             "p_malignant": 0.99, "p_benign": 0.99},
        ]
    if studies:
        session.execute(insert(Study), studies)
    if runs:
        session.execute(insert(ScoringRun), runs)
        session.execute(insert(Score), scores)
