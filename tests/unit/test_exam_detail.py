"""exam_detail: one exam in full for an admin (the function `triage exams show` and
GET /api/v1/exams/{study_uid} call), on a database built by the migrations; a bounded number
of SQL statements however many runs the exam has; patient IDs only when asked for."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import event

from tests.exam_detail_rows import CALLING_AE, MEMBERS, PACS, PATIENT_ID, VNA, RunSpec, add_exam
from triage.db import Database
from triage.db.exam_detail import HIDDEN, ExamDetail, exam_detail

UID = "1.2.826.0.1.3680043.8.498.77"
RESCORE = [
    RunSpec(model_set="ms-old", category="NOT TRIAGED", score=0.42, verified=False,
            not_triaged_reason="weights of gmic-resnet18-1 are not verified", minutes=5),
    RunSpec(model_set="ms-new", category="HIGH", score=0.71, minutes=20),
]


def _read(db: Database, uid: str = UID, **kwargs: bool) -> ExamDetail | None:
    with db.session() as session:
        return exam_detail(session, uid, **kwargs)


def _seeded(db: Database) -> ExamDetail:
    with db.session() as session:
        add_exam(session, UID, RESCORE)
        add_exam(session, "1.2.3.other", [RunSpec()], accession="OTHER")
    detail = _read(db)
    assert detail is not None
    return detail


def test_an_unknown_study_uid_gives_none(sqlite_db: Database) -> None:
    _seeded(sqlite_db)
    assert _read(sqlite_db, "9.9.9") is None


def test_header_status_and_status_history_in_order(sqlite_db: Database) -> None:
    d = _seeded(sqlite_db)
    assert d.study_instance_uid == UID and d.accession_numbers == ("ACC9",)
    assert d.status == "delivered" and d.study_date == "20260302"
    assert d.views == ("L-CC", "L-MLO", "R-CC", "R-MLO")
    assert d.hold_reason is None and d.skipped_reason is None and d.failure_reason is None
    assert [(c.from_status, c.to_status) for c in d.status_history] == [
        (None, "receiving"), ("receiving", "ready"), ("ready", "queued"), ("queued", "scoring"),
        ("scoring", "scored"), ("scored", "delivered")]
    assert d.status_history[1].reason == "quiet period over"


def test_instances_carry_classification_calling_ae_and_flags(sqlite_db: Database) -> None:
    d = _seeded(sqlite_db)
    assert len(d.instances) == 5
    assert {i.calling_ae for i in d.instances} == {CALLING_AE}
    ct = d.instances[-1]
    assert (ct.image_class, ct.scorable, ct.chosen, ct.reason) == (
        "other", False, False, "CT Image Storage is not a mammogram")
    mammo = d.instances[0]
    assert (mammo.laterality, mammo.view, mammo.scorable, mammo.chosen, mammo.superseded,
            mammo.loopback) == ("L", "CC", True, True, False, False)


def test_every_run_is_listed_oldest_first_and_the_rescore_is_the_latest(
        sqlite_db: Database) -> None:
    d = _seeded(sqlite_db)
    assert [(r.model_set_version, r.category, r.exam_score, r.verified, r.latest)
            for r in d.runs] == [("ms-old", "NOT TRIAGED", 0.42, False, False),
                                 ("ms-new", "HIGH", 0.71, True, True)]
    assert d.latest_run is d.runs[1]
    old = d.runs[0]
    assert old.not_triaged_reason == "weights of gmic-resnet18-1 are not verified"
    assert old.timings == {"total_s": 1.5} and old.notes == ("note of run 0",)
    assert old.started_at < d.runs[1].started_at and old.finished_at is not None


def test_each_run_has_its_members_and_member_by_view_by_breast_scores(
        sqlite_db: Database) -> None:
    run = _seeded(sqlite_db).runs[1]
    assert [(m.name, m.included) for m in run.members] == [
        (MEMBERS[0], True), (MEMBERS[1], True), ("dmv-cnn-image-only", False)]
    left_out = run.members[2]
    assert left_out.failure_reason == "the exam lacks R-MLO"
    assert run.members[0].weights_sha256 == "0" * 64
    views = {(s.member, s.laterality, s.view): s.p_malignant
             for s in run.scores if s.level == "view"}
    assert len(views) == 8  # 2 members x 4 views
    assert views[(MEMBERS[1], "R", "MLO")] == 0.2 + 0.1 + 0.03
    breasts = {(s.member, s.laterality) for s in run.scores if s.level == "breast"}
    assert breasts == {(m, lat) for m in (*MEMBERS, None) for lat in "LR"}
    assert [(s.member, s.p_malignant) for s in run.scores if s.level == "exam"] == [(None, 0.71)]


def test_outputs_of_each_run_with_delivery_state_per_destination(sqlite_db: Database) -> None:
    d = _seeded(sqlite_db)
    for k, run in enumerate(d.runs):
        sr, overlay = run.outputs
        assert (sr.kind, sr.sop_instance_uid) == ("sr_tid1500", f"{UID}.500.{k}")
        assert [(x.destination, x.status, x.attempts, x.last_error) for x in sr.deliveries] == [
            (PACS, "sent", 1, None), (VNA, "failed", 3, "0xA900 SOP class not supported")]
        assert [(x.destination, x.status) for x in overlay.deliveries] == [(PACS, "pending")]
    assert d.outputs_without_run == ()


def test_audit_events_are_those_of_this_exam_only(sqlite_db: Database) -> None:
    d = _seeded(sqlite_db)
    assert [(e.kind, e.sop_instance_uid) for e in d.audit_events] == [
        ("patient_identity_conflict", f"{UID}.1.0"), ("outbox_retry", f"{UID}.500.0")]
    assert d.audit_events[1].detail == {"destination": VNA, "reason": "VNA now accepts SR"}


def test_patient_ids_are_left_out_unless_asked_for(sqlite_db: Database) -> None:
    with sqlite_db.session() as session:
        add_exam(session, UID, RESCORE, status="held", hold_reason=(
            f"patient identity conflict: exam patient Patient ID '{PATIENT_ID}' (issuer 'HOSP') "
            "vs Patient ID \"OTHER-PID-42\" (no issuer); run triage exams release"))
    hidden = _read(sqlite_db)
    assert hidden is not None and not hidden.patient_id_included
    text = json.dumps(hidden.to_dict())
    assert PATIENT_ID not in text and "OTHER-PID-42" not in text
    assert hidden.patient_id is None and hidden.instances[0].patient_id is None
    assert hidden.hold_reason == (
        f"patient identity conflict: exam patient Patient ID {HIDDEN} (issuer {HIDDEN}) "
        f"vs Patient ID {HIDDEN} (no issuer); run triage exams release")
    assert hidden.audit_events[0].detail["existing"] == {
        "patient_id": HIDDEN, "issuer_of_patient_id": HIDDEN}
    assert hidden.audit_events[0].detail["calling_ae"] == CALLING_AE

    shown = _read(sqlite_db, include_patient_id=True)
    assert shown is not None and shown.patient_id == PATIENT_ID
    assert shown.issuer_of_patient_id == "HOSP" and shown.instances[0].patient_id == PATIENT_ID
    assert PATIENT_ID in (shown.hold_reason or "")
    assert shown.audit_events[0].detail["incoming"]["patient_id"] == "OTHER-PID-42"


def test_to_dict_is_json_ready_with_iso_times(sqlite_db: Database) -> None:
    d = _seeded(sqlite_db)
    data = json.loads(json.dumps(d.to_dict()))
    assert data["runs"][1]["model_set_version"] == "ms-new"
    assert data["runs"][1]["outputs"][0]["deliveries"][1]["status"] == "failed"
    assert data["accession_numbers"] == ["ACC9"] and data["patient_id"] is None
    assert datetime.fromisoformat(data["first_received_at"]) == d.first_received_at
    assert data["runs"][0]["scores"][0]["member"] == MEMBERS[0]


def _statements(db: Database, action: Callable[[], object]) -> int:
    count = 0

    def before_cursor_execute(*_args: object) -> None:
        nonlocal count
        count += 1

    event.listen(db.engine, "before_cursor_execute", before_cursor_execute)
    try:
        action()
    finally:
        event.remove(db.engine, "before_cursor_execute", before_cursor_execute)
    return count


def test_statement_count_is_the_same_for_one_run_and_twenty(sqlite_db: Database) -> None:
    with sqlite_db.session() as session:
        add_exam(session, "1.one", [RunSpec()])
        add_exam(session, "1.twenty", [RunSpec(model_set=f"ms-{k}", minutes=k) for k in range(20)])
    one = _statements(sqlite_db, lambda: _read(sqlite_db, "1.one"))
    twenty = _statements(sqlite_db, lambda: _read(sqlite_db, "1.twenty"))
    detail = _read(sqlite_db, "1.twenty")
    assert detail is not None and len(detail.runs) == 20
    assert sum(len(r.scores) for r in detail.runs) == 20 * (8 + 4 + 2 + 1)
    assert one == twenty <= 8  # one statement per table
