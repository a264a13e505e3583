"""Patient identity within an exam: a second patient's image under one Study Instance UID (or
accession group), or a SOP Instance UID re-sent under another patient, is kept unscorable,
audited, never merged or superseding, and the exam is held until an admin releases it.

Everything runs through ``record_instance`` on a fake clock (``tests.unit.mg_headers.Site``).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select
from typer.testing import CliRunner

from tests.unit.mg_headers import STANDARD, Site, mg_header, raw_digest
from triage.cli import app
from triage.config import Settings, load_settings
from triage.db import AuditEvent, Database, Instance, ScoringRun, StatusChange, Study
from triage.dicom.records import StoredObject
from triage.dispatch import enqueue_ready
from triage.exams.identity import (
    CONFLICT_PREFIX,
    PatientIdentity,
    adopted_identity,
    conflicting,
)
from triage.vocabulary import ExamStatus

T0 = datetime(2025, 1, 6, 12, 0, tzinfo=UTC)
QUIET = timedelta(seconds=2)  # settings fixture: quiet 1 s, max wait 5 s
AFTER_MAX_WAIT = timedelta(seconds=6)
PATIENT_A = "PAT-A-73519"
PATIENT_B = "PAT-B-28604"
runner = CliRunner()


@pytest.fixture
def site(sqlite_db: Database, settings: Settings, tmp_path: Path) -> Site:
    return Site(sqlite_db, settings, tmp_path / "spool")


def _exam_of_a(site: Site, at: datetime = T0, **header: Any) -> tuple[str, int]:
    study_uid, outcomes = site.send_exam(at, PatientID=PATIENT_A, PatientName="Alpha^Ann",
                                         AcquisitionDateTime="20250106101000", **header)
    return study_uid, outcomes[0].study_id


def _image_of_b(study_uid: str, lat: str = "L", view: str = "CC", **header: Any) -> Any:
    """Patient B's image, acquired later than A's (it would win A's view if merged)."""
    return mg_header(lat, view, study_uid=study_uid, PatientID=PATIENT_B,
                     PatientName="Beta^Bob", AcquisitionDateTime="20250106110000", **header)


def _row(site: Site, study_id: int, instance_id: int | None) -> Instance:
    return next(r for r in site.instances(study_id) if r.id == instance_id)


def _changes(site: Site, study_id: int) -> list[tuple[str | None, str]]:
    with site.db.session() as session:
        return [(c.from_status, c.to_status) for c in session.scalars(
            select(StatusChange).where(StatusChange.study_id == study_id)
            .order_by(StatusChange.id))]


# ---- the rules ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("a", "b", "conflict"), [
    (("P1", None), ("P2", None), True),
    (("P1", "HOSP-A"), ("P2", "HOSP-A"), True),
    (("P1", "HOSP-A"), ("P1", "HOSP-B"), True),
    (("P1", "HOSP-A"), ("P1", "HOSP-A"), False),
    (("P1", "HOSP-A"), ("P1", None), False),  # issuer missing on one side
    (("P1", None), (None, None), False),  # Patient ID missing on one side
    ((None, "HOSP-A"), ("P2", "HOSP-B"), False),
    (("p1", None), ("P1", None), True),  # IDs compare exactly
])
def test_conflict_is_two_present_ids_that_differ_or_one_id_with_two_issuers(
    a: tuple[str | None, str | None], b: tuple[str | None, str | None], conflict: bool
) -> None:
    first, second = PatientIdentity(*a), PatientIdentity(*b)
    assert conflicting(first, second) is conflict
    assert conflicting(second, first) is conflict


def test_the_exam_patient_is_the_first_id_seen_with_its_issuer() -> None:
    none = PatientIdentity(None, None)
    assert adopted_identity(none, PatientIdentity(None, "H")) == none  # an issuer alone: no
    first = adopted_identity(none, PatientIdentity("P1", None))
    assert first == PatientIdentity("P1", None)
    assert adopted_identity(first, PatientIdentity("P1", "H")) == PatientIdentity("P1", "H")
    assert adopted_identity(first, PatientIdentity("P9", "H")) == first


# ---- recording ---------------------------------------------------------------------------------
def test_each_instance_row_keeps_its_patient_id_and_issuer(site: Site) -> None:
    outcome = site.send(mg_header("L", "CC", PatientID=PATIENT_A, IssuerOfPatientID="HOSP"), T0)
    row = site.instances(outcome.study_id)[0]
    assert (row.patient_id, row.issuer_of_patient_id) == (PATIENT_A, "HOSP")
    study = site.study(outcome.study_id)
    assert (study.patient_id, study.issuer_of_patient_id) == (PATIENT_A, "HOSP")


def test_second_patient_under_one_study_uid_is_kept_unscorable_and_the_exam_held(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    study_uid, study_id = _exam_of_a(site)
    a_left_cc = next(r for r in site.instances(study_id) if (r.laterality, r.view) == ("L", "CC"))
    at = T0 + timedelta(milliseconds=200)
    outcome = site.send(_image_of_b(study_uid), at)

    assert outcome.study_id == study_id and not outcome.duplicate and not outcome.reopened
    b = _row(site, study_id, outcome.instance_id)
    assert (b.patient_id, b.scorable, b.chosen, b.superseded) == (PATIENT_B, False, False, False)
    assert b.reason is not None and b.reason.startswith(
        f"{CONFLICT_PREFIX} exam patient Patient ID {PATIENT_A!r}")
    assert PATIENT_B in b.reason
    assert Path(b.path).exists()  # the bytes are kept
    assert _row(site, study_id, a_left_cc.id).chosen  # A's image of that view stays chosen

    study = site.study(study_id)
    assert study.status == ExamStatus.HELD
    assert study.patient_id == PATIENT_A  # never relabelled with the other patient
    assert study.hold_reason is not None and study.hold_reason.startswith(CONFLICT_PREFIX)
    assert PATIENT_A in study.hold_reason and PATIENT_B in study.hold_reason
    assert f"triage exams release {study_uid}" in study.hold_reason
    assert "1 image(s)" in study.hold_reason
    assert _changes(site, study_id)[-1] == ("receiving", "held")

    (event,) = site.events("patient_identity_conflict")
    assert (event.study_id, event.sop_instance_uid) == (study_id, b.sop_instance_uid)
    assert event.detail["conflict"] == "exam_patient"
    assert event.detail["existing"]["patient_id"] == PATIENT_A
    assert event.detail["incoming"]["patient_id"] == PATIENT_B

    # a held exam is not assessed, not even after max wait
    assert site.readiness(at + QUIET) == []
    assert site.readiness(at + AFTER_MAX_WAIT) == []
    assert site.study(study_id).status == ExamStatus.HELD
    assert enqueue_ready(site.db, None) == []

    # log lines carry UIDs, never patient identifiers or names
    logged = [json.dumps({k: str(v) for k, v in vars(r).items()}) for r in caplog.records]
    assert any("patient identity conflict" in line and b.sop_instance_uid in line
               for line in logged)
    for secret in (PATIENT_A, PATIENT_B, "Alpha", "Beta"):
        assert not [line for line in logged if secret in line], secret


def test_more_conflicting_images_update_the_hold_reason(site: Site) -> None:
    study_uid, study_id = _exam_of_a(site)
    site.send(_image_of_b(study_uid, "L", "CC"), T0 + timedelta(seconds=1))
    site.send(_image_of_b(study_uid, "R", "CC"), T0 + timedelta(seconds=2))
    study = site.study(study_id)
    assert study.status == ExamStatus.HELD and "2 image(s)" in (study.hold_reason or "")
    assert _changes(site, study_id).count(("receiving", "held")) == 1
    assert len(site.events("patient_identity_conflict")) == 2


def test_same_patient_id_from_another_issuer_conflicts(site: Site) -> None:
    study_uid, study_id = _exam_of_a(site, IssuerOfPatientID="HOSP-A")
    outcome = site.send(mg_header("L", "CC", study_uid=study_uid, PatientID=PATIENT_A,
                                  IssuerOfPatientID="HOSP-B"), T0 + timedelta(seconds=1))
    row = _row(site, study_id, outcome.instance_id)
    assert not row.scorable and "'HOSP-B'" in (row.reason or "")
    assert site.study(study_id).status == ExamStatus.HELD


@pytest.mark.parametrize("header", [{"PatientID": ""}, {"IssuerOfPatientID": "HOSP-B"}],
                         ids=["no Patient ID", "issuer only on the new image"])
def test_a_missing_id_or_issuer_on_one_side_is_not_a_conflict(site: Site,
                                                             header: dict[str, Any]) -> None:
    study_uid, outcomes = site.send_exam(T0, views=STANDARD[:3], PatientID=PATIENT_A)
    study_id = outcomes[0].study_id
    header.setdefault("PatientID", PATIENT_A)
    outcome = site.send(mg_header("R", "MLO", study_uid=study_uid, **header),
                        T0 + timedelta(seconds=1))
    assert _row(site, study_id, outcome.instance_id).scorable
    assert site.readiness(T0 + timedelta(seconds=1) + QUIET) == [study_id]
    assert site.study(study_id).status == ExamStatus.READY
    assert site.events("patient_identity_conflict") == []


def test_an_exam_without_patient_id_takes_the_first_one_that_comes(site: Site) -> None:
    study_uid = generate_uid()
    first = site.send(mg_header("L", "CC", study_uid=study_uid, PatientID=""), T0)
    site.send(mg_header("R", "CC", study_uid=study_uid, PatientID=PATIENT_A), T0)
    assert site.study(first.study_id).patient_id == PATIENT_A
    site.send(_image_of_b(study_uid, "L", "MLO"), T0)
    assert site.study(first.study_id).status == ExamStatus.HELD


def test_accession_grouping_holds_an_exam_that_joins_two_patients(site: Site) -> None:
    by_accession = Site(site.db, load_settings(
        data_dir=site.settings.data_dir, quiet_seconds=1, max_wait_seconds=5,
        group_by="accession", group_window_hours=12), site.spool)
    _, a = by_accession.send_exam(T0, views=STANDARD[:2], accession="ACC9", PatientID=PATIENT_A)
    _, b = by_accession.send_exam(T0 + timedelta(minutes=5), views=STANDARD[2:],
                                  accession="ACC9", PatientID=PATIENT_B)
    study_id = a[0].study_id
    assert {o.study_id for o in b} == {study_id}
    assert not any(r.scorable for r in site.instances(study_id) if r.patient_id == PATIENT_B)
    assert by_accession.study(study_id).status == ExamStatus.HELD
    assert by_accession.readiness(T0 + timedelta(minutes=5) + AFTER_MAX_WAIT) == []


# ---- a conflict in every status -----------------------------------------------------------------
PATHS = {
    ExamStatus.READY: (),
    ExamStatus.QUEUED: (ExamStatus.QUEUED,),
    ExamStatus.SCORING: (ExamStatus.QUEUED, ExamStatus.SCORING),
    ExamStatus.SCORED: (ExamStatus.QUEUED, ExamStatus.SCORING, ExamStatus.SCORED),
    ExamStatus.DELIVERED: (ExamStatus.QUEUED, ExamStatus.SCORING, ExamStatus.SCORED,
                           ExamStatus.DELIVERED),
    ExamStatus.FAILED: (ExamStatus.FAILED,),
    ExamStatus.SKIPPED: (ExamStatus.QUEUED, ExamStatus.SCORING, ExamStatus.SKIPPED),
}


@pytest.mark.parametrize("status", list(PATHS), ids=str)
def test_a_conflict_after_the_exam_was_ready_holds_it_too(site: Site, status: ExamStatus) -> None:
    study_uid, study_id = _exam_of_a(site)
    assert site.readiness(T0 + QUIET) == [study_id]
    site.move(study_id, *PATHS[status], at=T0 + QUIET)
    digest = site.study(study_id).chosen_set_digest
    at = T0 + timedelta(minutes=10)
    outcome = site.send(_image_of_b(study_uid), at)
    assert not outcome.reopened
    study = site.study(study_id)
    assert study.status == ExamStatus.HELD and study.scoring_owner is None
    assert study.chosen_set_digest == digest
    assert _changes(site, study_id)[-1] == (status.value, "held")
    assert site.events("patient_identity_conflict")[0].detail["exam_status"] == status.value
    assert site.readiness(at + AFTER_MAX_WAIT) == []
    assert site.study(study_id).status == ExamStatus.HELD


# ---- a SOP Instance UID re-sent under another patient ------------------------------------------
def test_sop_instance_uid_resent_for_another_patient_never_supersedes(site: Site) -> None:
    study_uid, study_id = _exam_of_a(site)
    original = next(r for r in site.instances(study_id) if (r.laterality, r.view) == ("L", "CC"))
    at = T0 + timedelta(seconds=1)
    outcome = site.send(_image_of_b(study_uid, sop_uid=original.sop_instance_uid), at)
    assert outcome.new_version and not outcome.duplicate

    first = _row(site, study_id, original.id)
    assert (first.superseded, first.chosen, first.scorable) == (False, True, True)
    resent = _row(site, study_id, outcome.instance_id)
    assert (resent.version, resent.superseded, resent.scorable, resent.chosen) == (
        2, False, False, False)
    assert (resent.reason or "").startswith(
        f"{CONFLICT_PREFIX} SOP Instance UID already stored for Patient ID {PATIENT_A!r}")
    assert site.study(study_id).status == ExamStatus.HELD
    assert site.events("new_instance_version") == []
    (event,) = site.events("patient_identity_conflict")
    assert event.detail["conflict"] == "sop_instance_uid_reused"
    assert event.detail["stored_version_ids"] == [original.id]


def test_sop_instance_uid_reused_in_another_study_leaves_the_first_exam_alone(site: Site) -> None:
    _, study_id = _exam_of_a(site)
    assert site.readiness(T0 + QUIET) == [study_id]
    original = site.instances(study_id)[0]
    other_uid = generate_uid()
    outcome = site.send(_image_of_b(other_uid, original.laterality or "L", original.view or "CC",
                                    sop_uid=original.sop_instance_uid), T0 + timedelta(minutes=1))
    assert outcome.study_id != study_id
    assert site.study(study_id).status == ExamStatus.READY
    assert not _row(site, study_id, original.id).superseded
    other = site.study(outcome.study_id)
    assert other.status == ExamStatus.HELD and other.patient_id is None
    assert not _row(site, outcome.study_id, outcome.instance_id).scorable


def test_the_first_patients_correction_still_supersedes_after_a_conflicting_resend(
    site: Site
) -> None:
    study_uid, study_id = _exam_of_a(site)
    original = next(r for r in site.instances(study_id) if (r.laterality, r.view) == ("L", "CC"))
    conflict = site.send(_image_of_b(study_uid, sop_uid=original.sop_instance_uid),
                         T0 + timedelta(seconds=1))
    corrected = site.send(mg_header("L", "CC", study_uid=study_uid, PatientID=PATIENT_A,
                                    sop_uid=original.sop_instance_uid,
                                    AcquisitionDateTime="20250106101000",
                                    SeriesDescription="corrected"), T0 + timedelta(seconds=2))
    assert corrected.new_version
    row = _row(site, study_id, corrected.instance_id)
    assert row.scorable and row.version == 3
    assert _row(site, study_id, original.id).superseded
    assert len(site.events("patient_identity_conflict")) == 1
    assert _row(site, study_id, conflict.instance_id).scorable is False


# ---- release -----------------------------------------------------------------------------------
def _cli(settings: Settings, monkeypatch: pytest.MonkeyPatch, *args: str) -> Any:
    monkeypatch.setenv("TRIAGE_DATA_DIR", str(settings.data_dir))
    return runner.invoke(app, list(args))


def test_admin_sees_the_held_exam_and_its_reason(site: Site,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    study_uid, study_id = _exam_of_a(site)
    site.send(_image_of_b(study_uid), T0 + timedelta(seconds=1))
    listed = _cli(site.settings, monkeypatch, "exams", "list")
    assert listed.exit_code == 0, listed.output
    lines = listed.stdout.splitlines()
    n = next(i for i, x in enumerate(lines) if x.endswith(study_uid))
    assert " held " in lines[n] and f"held: {CONFLICT_PREFIX}" in lines[n + 1]
    held = json.loads(_cli(site.settings, monkeypatch, "exams", "list", "--status", "held",
                           "--json").stdout)
    assert [e["study_instance_uid"] for e in held] == [study_uid]
    # the reason names both patient IDs: shown only by `exams show --patient-id`
    hold_reason = site.study(study_id).hold_reason
    assert hold_reason and PATIENT_B in hold_reason
    assert held[0]["hold_reason"].startswith(CONFLICT_PREFIX)
    assert PATIENT_A not in listed.stdout + json.dumps(held)
    assert PATIENT_B not in listed.stdout + json.dumps(held)
    shown = _cli(site.settings, monkeypatch, "exams", "show", study_uid)
    assert shown.exit_code == 0, shown.output
    assert "  status         held" in shown.stdout.splitlines()
    assert f"  held           {CONFLICT_PREFIX}" in shown.stdout
    assert "not scored: patient identity conflict" in shown.stdout
    assert PATIENT_B not in shown.stdout and "Alpha" not in shown.stdout
    with_ids = _cli(site.settings, monkeypatch, "exams", "show", study_uid, "--patient-id")
    assert f"  held           {hold_reason}" in with_ids.stdout.splitlines()


def test_release_assembles_the_exam_again_without_the_conflicting_images(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    study_uid, study_id = _exam_of_a(site)
    at = T0 + timedelta(seconds=1)
    b = site.send(_image_of_b(study_uid), at)
    assert site.study(study_id).status == ExamStatus.HELD
    refused = _cli(site.settings, monkeypatch, "exams", "release", study_uid)
    assert refused.exit_code != 0  # --reason is required

    done = _cli(site.settings, monkeypatch, "exams", "release", study_uid, "--reason",
                "RIS ticket 42: other patient's image removed at the archive", "--by", "admin1")
    assert done.exit_code == 0, done.output
    assert "1 excluded" in done.stdout and "4 image(s) chosen" in done.stdout
    study = site.study(study_id)
    assert study.status == ExamStatus.RECEIVING and study.hold_reason is None
    assert _changes(site, study_id)[-1] == ("held", "receiving")
    (event,) = site.events("exam_released")
    assert event.detail["by"] == "admin1"
    assert event.detail["reason"].startswith("RIS ticket 42")
    assert event.detail["hold_reason"].startswith(CONFLICT_PREFIX)
    assert event.detail["excluded_instance_ids"] == [b.instance_id]

    later = datetime.now(UTC) + QUIET  # the release is stamped with the real clock
    assert site.readiness(later) == [study_id]
    assert site.study(study_id).status == ExamStatus.READY
    chosen = [r for r in site.instances(study_id) if r.chosen]
    assert len(chosen) == 4 and {r.patient_id for r in chosen} == {PATIENT_A}

    again = _cli(site.settings, monkeypatch, "exams", "release", study_uid, "--reason", "x")
    assert again.exit_code == 1 and "not held" in again.output


def test_images_that_arrive_while_held_are_assembled_on_release(site: Site) -> None:
    from triage.exams.hold import release

    study_uid, outcomes = site.send_exam(T0, views=STANDARD[:3], PatientID=PATIENT_A)
    study_id = outcomes[0].study_id
    site.send(_image_of_b(study_uid, "R", "MLO"), T0 + timedelta(seconds=1))
    late = site.send(mg_header("R", "MLO", study_uid=study_uid, PatientID=PATIENT_A),
                     T0 + timedelta(seconds=2))
    assert site.study(study_id).status == ExamStatus.HELD
    assert not _row(site, study_id, late.instance_id).chosen
    with site.db.session() as session:
        result = release(session, study_uid, reason="fixed", by="admin",
                         now=T0 + timedelta(minutes=1))
    assert (result.chosen_instances, result.excluded_instances) == (4, 1)
    assert _row(site, study_id, late.instance_id).chosen
    assert site.readiness(T0 + timedelta(minutes=1) + QUIET) == [study_id]


# ---- a worker scoring the exam when it is held stores nothing -----------------------------------
def test_exam_held_while_it_is_scored_stores_no_run(site: Site, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from triage.config import EnsembleMember
    from triage.models import ensure_demo_weights
    from triage.pipeline import Outcome, load_ensemble, process_study, task
    from triage.synthetic import ExamSpec, generate_exam

    member = "gmic-testing-small"
    settings = load_settings(data_dir=site.settings.data_dir, quiet_seconds=1,
                             max_wait_seconds=5, testing=True, allow_uncalibrated=True,
                             device="cpu", ensemble=[EnsembleMember(name=member, weight=1.0)])
    ensure_demo_weights(settings, [member])
    exam = generate_exam(ExamSpec(seed=3, scale=0.25), tmp_path / "exam")
    scorer = Site(site.db, settings, site.spool)
    for path in map(Path, exam.files):
        header = pydicom.dcmread(path, stop_before_pixels=True)
        scorer.send(header, T0, stored=StoredObject(
            path, raw_digest(path), path.stat().st_size,
            str(header.file_meta.TransferSyntaxUID)))
    (study_id,) = scorer.readiness(T0 + QUIET)
    assert enqueue_ready(site.db, None) == [study_id]

    real = task.score_exam

    def conflict_arrives_meanwhile(*args: Any, **kwargs: Any) -> Any:
        scorer.send(_image_of_b(exam.study_instance_uid), T0 + timedelta(minutes=1))
        return real(*args, **kwargs)

    monkeypatch.setattr(task, "score_exam", conflict_arrives_meanwhile)
    assert process_study(site.db, load_ensemble(settings), study_id) is Outcome.ALREADY_DONE
    assert site.study(study_id).status == ExamStatus.HELD
    with site.db.session() as session:
        assert session.scalars(select(ScoringRun)).all() == []
        assert [e.kind for e in session.scalars(select(AuditEvent))].count(
            "patient_identity_conflict") == 1
        assert session.get(Study, study_id) is not None
