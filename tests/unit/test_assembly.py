"""Exam assembly: grouping, chosen set, duplicates/versions, re-open and readiness rules.

Every readiness rule runs on a fake clock (the ``now`` argument); nothing sleeps.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import RLELossless, generate_uid
from sqlalchemy import func, select

from tests.unit.mg_headers import STANDARD, Site, code_item, mg_header, write_instance
from triage.config import Settings, load_settings
from triage.db import Association, Database, Instance, StatusChange, Study
from triage.db.session import create_database
from triage.dicom.associations import close_association, close_stale_associations, open_association
from triage.dicom.classify import classify_instance
from triage.dicom.records import StoredObject
from triage.exams import chosen, evaluate_readiness, record_instance
from triage.vocabulary import ExamStatus

T0 = datetime(2025, 1, 6, 12, 0, tzinfo=UTC)
CT = "1.2.840.10008.5.1.4.1.1.2"


@pytest.fixture
def site(sqlite_db: Database, settings: Settings, tmp_path: Path) -> Site:
    return Site(sqlite_db, settings, tmp_path / "spool")


def _with(site: Site, **overrides: object) -> Site:
    settings = load_settings(data_dir=site.settings.data_dir,
                             quiet_seconds=site.settings.quiet_seconds,
                             max_wait_seconds=site.settings.max_wait_seconds, **overrides)
    return Site(site.db, settings, site.spool)


QUIET = timedelta(seconds=2)  # settings fixture: quiet 1 s, max wait 5 s
AFTER_MAX_WAIT = timedelta(seconds=6)
SCORED = (ExamStatus.READY, ExamStatus.QUEUED, ExamStatus.SCORING, ExamStatus.SCORED)


# ---- readiness -----------------------------------------------------------------------------------
def test_four_standard_views_become_ready_after_the_quiet_period(site: Site) -> None:
    _, outcomes = site.send_exam(T0)
    study_id = outcomes[0].study_id
    assert {o.study_id for o in outcomes} == {study_id}
    assert site.readiness(T0 + timedelta(milliseconds=500)) == []
    assert site.study(study_id).status == ExamStatus.RECEIVING
    assert site.readiness(T0 + QUIET) == [study_id]
    study = site.study(study_id)
    assert study.status == ExamStatus.READY and not study.partial
    assert study.image_classes == ["ffdm"]
    assert study.ready_at == T0 + QUIET
    assert sum(i.chosen for i in site.instances(study_id)) == 4


def test_status_changes_are_logged_from_the_first_instance(site: Site) -> None:
    site.send_exam(T0)
    site.readiness(T0 + QUIET)
    with site.db.session() as session:
        changes = list(session.scalars(select(StatusChange).order_by(StatusChange.id)))
    assert [(c.from_status, c.to_status) for c in changes] == [(None, "receiving"),
                                                               ("receiving", "ready")]


def test_an_open_association_holds_the_exam_until_it_closes(site: Site) -> None:
    with site.db.session() as session:
        assoc = open_association(session, calling_ae="MOD", called_ae="TRIAGE",
                                 peer_address="127.0.0.1", peer_port=1234, now=T0)
    study_uid = generate_uid()
    for lat, view in STANDARD:
        outcome = site.send(mg_header(lat, view, study_uid=study_uid), T0, association_id=assoc)
    assert site.readiness(T0 + QUIET) == []
    with site.db.session() as session:
        close_association(session, assoc, "released", now=T0 + QUIET)
        assert session.get(Association, assoc).instances_received == 4
    assert site.readiness(T0 + QUIET) == [outcome.study_id]


def test_an_association_left_open_does_not_block_past_max_wait(site: Site) -> None:
    with site.db.session() as session:
        assoc = open_association(session, calling_ae="ROUTER", called_ae="TRIAGE",
                                 peer_address="127.0.0.1", peer_port=1, now=T0)
    study_uid = generate_uid()
    for lat, view in STANDARD:
        outcome = site.send(mg_header(lat, view, study_uid=study_uid), T0, association_id=assoc)
    assert site.readiness(T0 + AFTER_MAX_WAIT) == [outcome.study_id]
    assert not site.study(outcome.study_id).partial


def test_stale_associations_are_closed_at_start_up(site: Site) -> None:
    with site.db.session() as session:
        assoc = open_association(session, calling_ae="MOD", called_ae="TRIAGE",
                                 peer_address="127.0.0.1", peer_port=1, now=T0)
    outcome = site.send(mg_header("L", "CC"), T0, association_id=assoc)
    with site.db.session() as session:
        assert close_stale_associations(session, now=T0 + QUIET) == 1
        row = session.get(Association, assoc)
        assert not row.is_open and row.end_reason == "listener restarted"
    with site.db.session() as session:
        assert close_stale_associations(session, now=T0 + QUIET) == 0
    assert site.events("stale_associations_closed")[0].detail["association_ids"] == [assoc]
    assert site.study(outcome.study_id).status == ExamStatus.RECEIVING


def test_three_views_wait_for_max_wait_then_one_breast_is_a_partial_exam(site: Site) -> None:
    _, outcomes = site.send_exam(T0, views=(("R", "CC"), ("R", "MLO"), ("L", "CC")))
    study_id = outcomes[0].study_id
    assert site.readiness(T0 + QUIET) == []
    assert site.readiness(T0 + AFTER_MAX_WAIT) == [study_id]
    study = site.study(study_id)
    assert study.status == ExamStatus.READY and study.partial
    with site.db.session() as session:
        reason = session.scalars(select(StatusChange.reason)
                                 .where(StatusChange.to_status == "ready")).one()
    assert "partial" in reason and "L-CC, R-CC, R-MLO" in reason


def test_max_wait_still_needs_a_quiet_exam(site: Site) -> None:
    study_uid, outcomes = site.send_exam(T0, views=(("R", "CC"), ("R", "MLO")))
    late = T0 + AFTER_MAX_WAIT
    site.send(mg_header("L", "CC", study_uid=study_uid), late)
    assert site.readiness(late + timedelta(milliseconds=100)) == []
    assert site.readiness(late + QUIET) == [outcomes[0].study_id]


def test_one_view_per_breast_after_max_wait_is_skipped_as_incomplete(site: Site) -> None:
    _, outcomes = site.send_exam(T0, views=(("R", "CC"), ("L", "MLO")))
    study_id = outcomes[0].study_id
    assert site.readiness(T0 + QUIET) == []
    assert site.readiness(T0 + AFTER_MAX_WAIT) == [study_id]
    study = site.study(study_id)
    assert study.status == ExamStatus.SKIPPED
    assert "incomplete exam" in study.skip_reason and "L-MLO, R-CC" in study.skip_reason


def test_exam_without_scorable_image_is_skipped_with_the_summarised_reasons(site: Site) -> None:
    study_uid = generate_uid()
    site.send(mg_header(None, None, study_uid=study_uid, sop_class=CT, modality="CT"), T0)
    site.send(mg_header(None, None, study_uid=study_uid, sop_class=CT, modality="CT"), T0)
    outcome = site.send(mg_header("L", "CC", study_uid=study_uid, QualityControlImage="YES"), T0)
    reason_ct = site.instances(outcome.study_id)[0].reason
    assert site.readiness(T0 + QUIET) == [outcome.study_id]
    study = site.study(outcome.study_id)
    assert study.status == ExamStatus.SKIPPED
    assert study.skip_reason.startswith("no scorable image: ")
    assert f"2 × {reason_ct}" in study.skip_reason
    assert "quality control image" in study.skip_reason


def test_too_old_study_is_skipped_with_that_reason(site: Site) -> None:
    aged = _with(site, max_study_age_hours=24)
    _, outcomes = aged.send_exam(T0, StudyDate="20241201", TimezoneOffsetFromUTC="+0000")
    assert aged.readiness(T0 + QUIET) == [outcomes[0].study_id]
    study = aged.study(outcomes[0].study_id)
    assert study.status == ExamStatus.SKIPPED
    assert "4 × study date 2024-12-01" in study.skip_reason
    assert "TRIAGE_MAX_STUDY_AGE_HOURS=24" in study.skip_reason


def test_non_screening_study_is_skipped_with_that_reason(site: Site) -> None:
    screening = _with(site, screening_procedures="*SCREEN*")
    _, outcomes = screening.send_exam(T0, StudyDescription="MAMMO DIAGNOSTIC")
    screening.readiness(T0 + QUIET)
    assert "not a configured screening procedure" in screening.study(
        outcomes[0].study_id).skip_reason


def test_readiness_is_per_image_class(site: Site) -> None:
    study_uid = generate_uid()
    for lat, view in STANDARD:
        site.send(mg_header(lat, view, study_uid=study_uid,
                            ImageType=["DERIVED", "PRIMARY", "GENERATED_2D"]), T0)
    outcome = site.send(mg_header("L", "CC", study_uid=study_uid), T0)  # one FFDM view
    assert site.readiness(T0 + QUIET) == [outcome.study_id]
    study = site.study(outcome.study_id)
    assert study.image_classes == ["synthetic2d"] and not study.partial
    assert sum(i.chosen for i in site.instances(outcome.study_id)) == 5


def test_readiness_survives_a_restart(site: Site, settings: Settings) -> None:
    _, outcomes = site.send_exam(T0)
    site.db.dispose()
    restarted = create_database(settings.resolved_database_url)
    try:
        assert evaluate_readiness(restarted, settings, T0 + QUIET) == [outcomes[0].study_id]
    finally:
        restarted.dispose()


# ---- chosen set ---------------------------------------------------------------------------------
def test_latest_acquired_image_of_a_view_is_chosen_and_the_choice_recorded(site: Site) -> None:
    study_uid, outcomes = site.send_exam(T0, AcquisitionDateTime="20250106101000")
    # arrives later but was acquired earlier: kept, not chosen
    earlier = site.send(mg_header("L", "CC", study_uid=study_uid,
                                  AcquisitionDateTime="20250106100000"), T0 + timedelta(1))
    rows = {r.id: r for r in site.instances(outcomes[0].study_id)}
    assert not rows[earlier.instance_id].chosen
    assert rows[outcomes[0].instance_id].chosen
    first_choice = site.events("view_choice")
    assert [e.detail["chosen_instance_id"] for e in first_choice] == [outcomes[0].instance_id]
    # a re-take acquired later wins
    retake = site.send(mg_header("L", "CC", study_uid=study_uid,
                                 AcquisitionDateTime="20250106102000"), T0 + timedelta(2))
    rows = {r.id: r for r in site.instances(outcomes[0].study_id)}
    assert rows[retake.instance_id].chosen and not rows[outcomes[0].instance_id].chosen
    assert len(rows) == 6 and sum(r.chosen for r in rows.values()) == 4
    choices = site.events("view_choice")
    assert choices[-1].detail["chosen_instance_id"] == retake.instance_id
    assert len(choices[-1].detail["candidates"]) == 3
    assert (choices[-1].detail["laterality"], choices[-1].detail["view"]) == ("L", "CC")


def test_without_acquisition_time_the_last_received_image_is_chosen(site: Site) -> None:
    study_uid = generate_uid()
    first = site.send(mg_header("R", "MLO", study_uid=study_uid), T0)
    second = site.send(mg_header("R", "MLO", study_uid=study_uid), T0 + timedelta(seconds=1))
    rows = {r.id: r for r in site.instances(first.study_id)}
    assert rows[second.instance_id].chosen and not rows[first.instance_id].chosen


def test_content_date_and_time_order_images_without_acquisition_datetime(site: Site) -> None:
    study_uid = generate_uid()
    later = site.send(mg_header("R", "MLO", study_uid=study_uid, ContentDate="20250106",
                                ContentTime="101500"), T0)
    site.send(mg_header("R", "MLO", study_uid=study_uid, ContentDate="20250106",
                        ContentTime="101000"), T0 + timedelta(seconds=1))
    chosen = [r.id for r in site.instances(later.study_id) if r.chosen]
    assert chosen == [later.instance_id]


# ---- duplicates and versions --------------------------------------------------------------------
def test_same_instance_twice_is_stored_once(site: Site) -> None:
    ds = mg_header("L", "CC")
    stored = write_instance(ds, site.spool)
    first = site.send(ds, T0, stored=stored)
    again = site.send(ds, T0 + timedelta(seconds=1), stored=stored)
    assert not first.duplicate and again.duplicate
    assert again.instance_id is None and again.study_id == first.study_id
    assert len(site.instances(first.study_id)) == 1
    event = site.events("duplicate_instance")[0]
    assert event.detail["match"] == "identical dataset bytes"
    assert event.sop_instance_uid == ds.SOPInstanceUID


def test_same_content_in_another_transfer_syntax_is_a_duplicate(site: Site) -> None:
    ds = mg_header("L", "CC")
    pixels = np.random.default_rng(0).integers(0, 4096, (16, 16)).astype(np.uint16)
    first = site.send(ds, T0, pixels=pixels)
    again = site.send(ds, T0, pixels=pixels, transfer_syntax=RLELossless)
    assert again.duplicate
    assert len(site.instances(first.study_id)) == 1
    assert "another transfer syntax" in site.events("duplicate_instance")[0].detail["match"]


def test_different_content_under_the_same_uid_is_a_new_version(site: Site) -> None:
    ds = mg_header("L", "CC")
    first = site.send(ds, T0, pixels=np.zeros((8, 8), np.uint16))
    second = site.send(ds, T0 + timedelta(seconds=1), pixels=np.ones((8, 8), np.uint16))
    assert second.new_version and not second.duplicate
    rows = {r.id: r for r in site.instances(first.study_id)}
    old, new = rows[first.instance_id], rows[second.instance_id]
    assert (old.version, old.superseded, old.chosen) == (1, True, False)
    assert (new.version, new.superseded, new.chosen) == (2, False, True)
    event = site.events("new_instance_version")[0]
    assert event.detail["superseded_instance_ids"] == [first.instance_id]


def test_corrected_header_is_a_new_version_even_with_equal_pixels(site: Site) -> None:
    ds = mg_header("L", "CC")
    site.send(ds, T0)
    corrected = mg_header("L", "CC", study_uid=ds.StudyInstanceUID, sop_uid=ds.SOPInstanceUID,
                          SeriesDescription="L CC (corrected)")
    assert site.send(corrected, T0 + timedelta(seconds=1)).new_version


def _write_lock_is_free(db_path: str) -> bool:
    """Can another connection take SQLite's write lock right now (no waiting)?"""
    import sqlite3

    other = sqlite3.connect(db_path, timeout=0, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        other.close()


def test_content_of_a_resent_image_is_hashed_before_the_write_lock_is_taken(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A re-sent image in another transfer syntax needs a full decode to compare contents;
    that work happens while other senders can still write (SQLite's lock is free)."""
    from triage.exams import recording

    db_path = str(site.db.engine.url.database)
    lock_free_during_hashing: list[bool] = []
    real = recording.canonical_digest

    def observed(path: Path) -> str:
        lock_free_during_hashing.append(_write_lock_is_free(db_path))
        return real(path)

    monkeypatch.setattr(recording, "canonical_digest", observed)
    ds = mg_header("L", "CC")
    pixels = np.random.default_rng(1).integers(0, 4096, (16, 16)).astype(np.uint16)
    site.send(ds, T0, pixels=pixels)
    again = site.send(ds, T0, pixels=pixels, transfer_syntax=RLELossless)
    assert again.duplicate
    assert len(lock_free_during_hashing) == 2  # the new file and the stored version
    assert all(lock_free_during_hashing), lock_free_during_hashing


# ---- re-open ---------------------------------------------------------------------------------
def _scored_exam(site: Site) -> tuple[str, int]:
    study_uid, outcomes = site.send_exam(T0, AcquisitionDateTime="20250106101000")
    study_id = outcomes[0].study_id
    site.readiness(T0 + QUIET)
    site.move(study_id, *SCORED[1:], at=T0 + QUIET)
    return study_uid, study_id


def test_scorable_image_that_changes_the_chosen_set_reopens_a_scored_exam(site: Site) -> None:
    study_uid, study_id = _scored_exam(site)
    digest = site.study(study_id).chosen_set_digest
    outcome = site.send(mg_header("R", "MLO", study_uid=study_uid,
                                  AcquisitionDateTime="20250106103000"), T0 + timedelta(hours=1))
    assert outcome.reopened
    study = site.study(study_id)
    assert study.status == ExamStatus.RECEIVING and study.reopen_count == 1
    assert study.chosen_set_digest != digest
    assert site.events("exam_reopened")[0].detail["from_status"] == "scored"
    assert site.readiness(T0 + timedelta(hours=1) + QUIET) == [study_id]


@pytest.mark.parametrize("kind", ["spot view", "older retake", "loopback", "duplicate"])
def test_images_that_do_not_change_the_chosen_set_do_not_reopen(site: Site, kind: str) -> None:
    study_uid, study_id = _scored_exam(site)
    at = T0 + timedelta(hours=1)
    if kind == "spot view":
        ds = mg_header("R", "MLO", study_uid=study_uid, AcquisitionDateTime="20250106103000")
        ds.ViewCodeSequence[0].ViewModifierCodeSequence = Sequence(
            [code_item("399055006", "SCT", "Spot Compression")])
        outcome = site.send(ds, at)
    elif kind == "older retake":
        outcome = site.send(mg_header("R", "MLO", study_uid=study_uid,
                                      AcquisitionDateTime="20250106090000"), at)
    elif kind == "loopback":
        outcome = site.send(mg_header("R", "MLO", study_uid=study_uid,
                                      sop_uid=site.settings.uid_root + "1.2.3",
                                      AcquisitionDateTime="20250106110000"), at)
    else:
        first = site.instances(study_id)[0]
        outcome = site.send(mg_header("L", "CC", study_uid=study_uid,
                                      sop_uid=first.sop_instance_uid), at,
                            stored=StoredObject(Path(first.path), first.content_digest,
                                                first.size_bytes, "1.2.840.10008.1.2.1"))
    assert not outcome.reopened
    assert site.study(study_id).status == ExamStatus.SCORED
    assert site.events("exam_reopened") == []


def test_loopback_is_recorded_and_never_scorable(site: Site) -> None:
    study_uid, study_id = _scored_exam(site)
    outcome = site.send(mg_header("L", "CC", study_uid=study_uid,
                                  sop_uid=site.settings.uid_root + "9.9"), T0 + timedelta(1))
    row = next(r for r in site.instances(study_id) if r.id == outcome.instance_id)
    assert row.loopback and not row.scorable and not row.chosen
    assert site.events("loopback_received")[0].study_id == study_id


@pytest.mark.parametrize("final", [ExamStatus.DELIVERED, ExamStatus.FAILED])
def test_delivered_and_failed_exams_reopen_too(site: Site, final: ExamStatus) -> None:
    study_uid, outcomes = site.send_exam(T0)
    study_id = outcomes[0].study_id
    site.readiness(T0 + QUIET)
    path = (*SCORED[1:], ExamStatus.DELIVERED) if final is ExamStatus.DELIVERED else (final,)
    site.move(study_id, *path, at=T0 + QUIET)
    assert site.send(mg_header("L", "MLO", study_uid=study_uid), T0 + timedelta(1)).reopened


def test_skipped_exam_reopens_and_waits_max_wait_again(site: Site) -> None:
    study_uid = generate_uid()
    first = site.send(mg_header("L", "CC", study_uid=study_uid, sop_class=CT, modality="CT"), T0)
    assert site.readiness(T0 + QUIET) == [first.study_id]
    later = T0 + timedelta(hours=2)
    assert site.send(mg_header("L", "CC", study_uid=study_uid), later).reopened
    site.send(mg_header("L", "MLO", study_uid=study_uid), later)
    study = site.study(first.study_id)
    assert study.skip_reason is None and study.status == ExamStatus.RECEIVING
    assert site.readiness(later + QUIET) == []  # max wait counts from the re-open
    assert site.readiness(later + AFTER_MAX_WAIT) == [first.study_id]
    assert site.study(first.study_id).partial


def test_change_during_scoring_reopens_once_the_run_is_over(site: Site) -> None:
    study_uid, outcomes = site.send_exam(T0, AcquisitionDateTime="20250106101000")
    study_id = outcomes[0].study_id
    site.readiness(T0 + QUIET)
    site.move(study_id, ExamStatus.QUEUED, ExamStatus.SCORING, at=T0 + QUIET)
    digest = site.study(study_id).chosen_set_digest
    at = T0 + timedelta(minutes=1)
    outcome = site.send(mg_header("L", "CC", study_uid=study_uid,
                                  AcquisitionDateTime="20250106103000"), at)
    assert not outcome.reopened
    assert site.study(study_id).chosen_set_digest == digest  # the set being scored stays
    assert site.events("chosen_set_change_pending")
    assert site.readiness(at + QUIET) == []  # still scoring
    site.move(study_id, ExamStatus.SCORED, at=at + QUIET)
    assert site.readiness(at + QUIET) == [study_id]
    study = site.study(study_id)
    assert study.status == ExamStatus.RECEIVING and study.chosen_set_digest != digest
    assert next(r for r in site.instances(study_id) if r.id == outcome.instance_id).chosen
    assert site.readiness(at + QUIET * 2) == [study_id]
    assert site.study(study_id).status == ExamStatus.READY


# ---- grouping -----------------------------------------------------------------------------------
def test_study_uid_grouping_keeps_studies_with_one_accession_apart(site: Site) -> None:
    _, a = site.send_exam(T0, views=STANDARD[:2], accession="ACC9")
    _, b = site.send_exam(T0, views=STANDARD[2:], accession="ACC9")
    assert a[0].study_id != b[0].study_id


def test_accession_grouping_joins_studies_of_one_visit(site: Site) -> None:
    by_accession = _with(site, group_by="accession", group_window_hours=12)
    _, a = by_accession.send_exam(T0, views=STANDARD[:2], accession="ACC9")
    _, b = by_accession.send_exam(T0 + timedelta(hours=1), views=STANDARD[2:], accession="ACC9")
    assert a[0].study_id == b[0].study_id
    assert by_accession.readiness(T0 + timedelta(hours=1) + QUIET) == [a[0].study_id]
    study = by_accession.study(a[0].study_id)
    assert study.accession_numbers == ["ACC9"]


def test_accession_grouping_respects_the_window_and_the_issuer(site: Site) -> None:
    by_accession = _with(site, group_by="accession", group_window_hours=12)
    _, a = by_accession.send_exam(T0, views=STANDARD[:1], accession="ACC9")
    _, late = by_accession.send_exam(T0 + timedelta(hours=13), views=STANDARD[:1],
                                     accession="ACC9")
    issuer = Dataset()
    issuer.LocalNamespaceEntityID = "OTHER-HOSPITAL"
    _, other = by_accession.send_exam(T0, views=STANDARD[:1], accession="ACC9",
                                      IssuerOfAccessionNumberSequence=Sequence([issuer]))
    assert len({a[0].study_id, late[0].study_id, other[0].study_id}) == 3
    assert by_accession.study(other[0].study_id).issuer_of_accession == "OTHER-HOSPITAL"


def test_late_image_of_a_grouped_study_joins_it_outside_the_window(site: Site) -> None:
    by_accession = _with(site, group_by="accession", group_window_hours=1)
    study_uid, a = by_accession.send_exam(T0, views=STANDARD[:1], accession="ACC9")
    _, b = by_accession.send_exam(T0 + timedelta(hours=5), views=STANDARD[1:2],
                                  accession="ACC9", study_uid=study_uid)
    assert a[0].study_id == b[0].study_id


def test_accession_grouping_without_accession_groups_by_study_uid(site: Site) -> None:
    by_accession = _with(site, group_by="accession")
    study_uid, a = by_accession.send_exam(T0, views=STANDARD[:1], accession="")
    _, b = by_accession.send_exam(T0, views=STANDARD[1:2], accession="", study_uid=study_uid)
    _, c = by_accession.send_exam(T0, views=STANDARD[1:2], accession="")
    assert a[0].study_id == b[0].study_id != c[0].study_id


def test_study_attributes_are_kept_on_the_exam(site: Site) -> None:
    ds = mg_header("L", "CC", accession="ACC1", PatientID="PID7", IssuerOfPatientID="HOSP",
                   StudyDate="20250106", StudyTime="093000.25", TimezoneOffsetFromUTC="+0100",
                   StudyDescription="Screening mammography")
    ds.ProcedureCodeSequence = Sequence([code_item("77067", "CPT", "Screening mammo")])
    outcome = site.send(ds, T0)
    study = site.study(outcome.study_id)
    assert (study.study_instance_uid, study.accession_numbers, study.patient_id,
            study.issuer_of_patient_id, study.study_date, study.study_time,
            study.timezone_offset, study.study_description) == (
        ds.StudyInstanceUID, ["ACC1"], "PID7", "HOSP", "20250106", "093000.25", "+0100",
        "Screening mammography")
    assert study.procedure_codes == [{"scheme": "CPT", "value": "77067",
                                      "meaning": "Screening mammo"}]
    assert study.first_received_at == T0


def test_instance_row_records_classification_and_file(site: Site) -> None:
    ds = mg_header("R", "MLO", AcquisitionDateTime="20250106101500.5+0100")
    stored = write_instance(ds, site.spool)
    outcome = site.send(ds, T0, stored=stored)
    row = site.instances(outcome.study_id)[0]
    assert (row.image_class, row.laterality, row.view, row.scorable, row.reason) == (
        "ffdm", "R", "MLO", True, None)
    assert (row.path, row.content_digest, row.size_bytes) == (
        str(stored.path), stored.raw_digest, stored.size_bytes)
    assert row.acquisition_datetime == "20250106091500.500000"  # UTC
    assert (row.rows, row.columns, row.received_at) == (8, 8, T0)


def test_non_standard_view_label_is_stored_on_the_row(site: Site) -> None:
    ds = mg_header("L", view_code=("399192008", "SCT", "cranio-caudal exaggerated laterally"))
    outcome = site.send(ds, T0)
    row = site.instances(outcome.study_id)[0]
    assert (row.view, row.scorable) == ("XCCL", False)
    assert "non-standard view XCCL" in row.reason


def test_record_instance_leaves_the_commit_to_the_caller(site: Site) -> None:
    ds = mg_header("L", "CC")
    stored = write_instance(ds, site.spool)
    session = site.db.sessions()
    try:
        record_instance(session, site.settings, ds, stored,
                        classify_instance(ds, site.settings, now=T0),
                        association_id=None, calling_ae=None, now=T0)
        session.rollback()
    finally:
        session.close()
    with site.db.session() as check:
        assert check.scalar(select(func.count()).select_from(Study)) == 0
        assert check.scalar(select(func.count()).select_from(Instance)) == 0


# ---- the incremental chosen-set path equals the full rules ------------------------------------
@pytest.mark.parametrize("seed", range(4))
def test_incremental_view_choice_matches_the_full_rules_after_every_image(site: Site,
                                                                          seed: int) -> None:
    """A new image of a receiving exam updates only its view's choice (fast path); after
    every image of a random sequence (repeated views, earlier and later acquisitions,
    images without acquisition time, not-scorable images) the flags, the chosen-set digest
    and the image classes equal what the full rules compute from all the exam's images."""
    rng = np.random.default_rng(seed)
    study_uid = generate_uid()
    slots = [("L", "CC"), ("R", "CC"), ("L", "MLO"), ("R", "MLO")]
    study_id = None
    for i in range(14):
        lat, view = slots[int(rng.integers(4))]
        extra: dict[str, object] = {}
        roll = rng.random()
        if roll < 0.6:
            extra["AcquisitionDateTime"] = f"2025010609{int(rng.integers(0, 60)):02d}00"
        if rng.random() < 0.2:
            extra["QualityControlImage"] = "YES"
        outcome = site.send(mg_header(lat, view, study_uid=study_uid, **extra),
                            T0 + timedelta(seconds=i))
        study_id = outcome.study_id
        with site.db.session() as session:
            study = session.get(Study, study_id)
            assert study is not None
            instances = chosen.study_instances(session, study_id)
            flags = [(inst.id, inst.chosen) for inst in instances]
            digest, classes = study.chosen_set_digest, list(study.image_classes)
            changed = chosen.apply_chosen(session, study, instances, T0)
            assert not changed, f"image {i}: digest differs from the full rules"
            assert [(inst.id, inst.chosen) for inst in instances] == flags, f"image {i}"
            assert study.image_classes == classes
            assert study.chosen_set_digest == digest
            session.rollback()
    assert study_id is not None
    assert sum(inst.chosen for inst in site.instances(study_id)) <= 4
