"""Patient identity end to end: `triage serve` (embedded default) with a real Orthanc as the
archive, DCMTK storescu as the modality.

Two patients sent under one Study Instance UID, or a SOP Instance UID re-sent under another
patient, must never be merged silently: the exam ends ``held`` with the reason, the other
patient's image is stored unscorable (and supersedes nothing), no run is stored and nothing
reaches the archive; the product's log never names a patient. After an admin's
``triage exams release`` the exam is scored on the first patient's images only.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from tests.e2e.conftest import ArchiveServer
from tests.integration.listener_helpers import echo, free_port, storescu
from tests.integration.product_helpers import (
    TRIAGE,
    Stack,
    exam_status,
    runs_of,
    small_exam,
    study_row,
    wait_until,
)
from triage.db import Instance, OutboxItem

OTHER_PATIENT_ID = "E2E-OTHER-PATIENT-4711"
OTHER_PATIENT_NAME = "Otherpatient^Bertha"
CONFLICT = "patient identity conflict:"


class Product(NamedTuple):
    stack: Stack
    port: int


@pytest.fixture
def product(tmp_path: Path, archive: ArchiveServer) -> Iterator[Product]:
    """`triage serve` (SQLite, embedded worker) sending its results to Orthanc."""
    port = free_port()
    stack = Stack(tmp_path / "stack", extra_env={
        "TRIAGE_ARCHIVE": f"{archive.ae_title}@127.0.0.1:{archive.dicom_port}",
        "TRIAGE_DICOM_PORT": str(port)})
    try:
        stack.spawn("serve")
        wait_until(lambda: echo(port), 90, "C-ECHO from triage", stack.logs)
        yield Product(stack, port)
    finally:
        stack.close()


def _as_other_patient(source: Path, out: Path, *, new_sop_uid: bool) -> Path:
    """``source`` relabelled for another patient (same Study Instance UID)."""
    ds = pydicom.dcmread(source)
    ds.PatientID = OTHER_PATIENT_ID
    ds.PatientName = OTHER_PATIENT_NAME
    if new_sop_uid:
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out, enforce_file_format=True)
    return out


def _send(product: Product, files: list[Path]) -> None:
    """One association, every object answered with success (the conflicting one too)."""
    sent = storescu(product.port, files)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert sent.stderr.count("Received Store Response (Success)") == len(files), sent.stderr


def _instances(stack: Stack, study_uid: str) -> list[Instance]:
    study = study_row(stack.db, study_uid)
    with stack.db.session() as session:
        rows = list(session.scalars(select(Instance).where(Instance.study_id == study.id)
                                    .order_by(Instance.id)))
        for row in rows:
            session.expunge(row)
        return rows


def _outbox_rows(stack: Stack, study_uid: str) -> int:
    study = study_row(stack.db, study_uid)
    with stack.db.session() as session:
        return len(session.scalars(select(OutboxItem).where(OutboxItem.study_id == study.id))
                   .all())


def _archived_studies(archive: ArchiveServer) -> set[str]:
    studies = archive.get("/studies?expand")
    assert isinstance(studies, list)
    return {str(s["MainDicomTags"]["StudyInstanceUID"]) for s in studies}


def _stays(predicate: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while True:
        assert predicate(), what
        if time.monotonic() >= deadline:
            return
        time.sleep(0.5)


def _cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TRIAGE, *args], env=stack.env, capture_output=True, text=True,
                          timeout=120, check=False)


def _assert_held_and_nothing_left(stack: Stack, archive: ArchiveServer, study_uid: str) -> None:
    wait_until(lambda: exam_status(stack.db, study_uid) == "held", 60, "exam held", stack.logs)

    def still_held_and_unscored() -> bool:
        return (exam_status(stack.db, study_uid) == "held" and not runs_of(stack.db, study_uid)
                and _outbox_rows(stack, study_uid) == 0
                and study_uid not in _archived_studies(archive))

    # longer than the quiet period, a dispatch and a scoring of this small exam would take
    _stays(still_held_and_unscored, 3 * stack.settings.quiet_seconds + 8,
           "a held exam was scored or sent")
    study = study_row(stack.db, study_uid)
    assert study.hold_reason and study.hold_reason.startswith(CONFLICT)
    assert OTHER_PATIENT_ID in study.hold_reason
    assert study.patient_id != OTHER_PATIENT_ID
    log = "".join(p.log() for p in stack.processes)
    assert "patient identity conflict" in log
    for secret in (OTHER_PATIENT_ID, "Otherpatient", str(study.patient_id)):
        assert secret not in log, f"the product's log names a patient ({secret!r})"


def test_two_patients_under_one_study_uid_hold_the_exam_until_an_admin_releases_it(
    tmp_path: Path, product: Product, archive: ArchiveServer
) -> None:
    stack = product.stack
    uid, files = small_exam(tmp_path / "exam", seed=7)
    other = _as_other_patient(files[0], tmp_path / "other" / "b.dcm", new_sop_uid=True)
    _send(product, [*files, other])
    _assert_held_and_nothing_left(stack, archive, uid)
    rows = _instances(stack, uid)
    assert len(rows) == 5
    (b,) = [r for r in rows if r.patient_id == OTHER_PATIENT_ID]
    assert not b.scorable and not b.chosen and not b.superseded
    assert b.reason and b.reason.startswith(f"{CONFLICT} exam patient")
    assert Path(b.path).exists()
    assert sum(r.chosen for r in rows) == 4

    shown = _cli(stack, "exams", "show", uid)
    assert shown.returncode == 0, shown.stderr
    assert "  status         held" in shown.stdout.splitlines()
    assert f"  held           {CONFLICT}" in shown.stdout

    released = _cli(stack, "exams", "release", uid, "--reason",
                    "other patient's image deleted at the archive", "--by", "e2e-admin")
    assert released.returncode == 0, released.stderr
    wait_until(lambda: exam_status(stack.db, uid) == "delivered", 180, "released exam delivered",
               stack.logs)
    (run,) = runs_of(stack.db, uid)
    a_sops = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    assert set(run.details["scored_sop_instance_uids"]) == a_sops
    assert uid in _archived_studies(archive)


def test_sop_instance_uid_resent_for_another_patient_does_not_supersede(
    tmp_path: Path, product: Product, archive: ArchiveServer
) -> None:
    stack = product.stack
    uid, files = small_exam(tmp_path / "exam", seed=8)
    reused = _as_other_patient(files[0], tmp_path / "other" / "reused.dcm", new_sop_uid=False)
    sop = str(pydicom.dcmread(files[0], stop_before_pixels=True).SOPInstanceUID)
    _send(product, [*files, reused])
    _assert_held_and_nothing_left(stack, archive, uid)
    versions = sorted((r for r in _instances(stack, uid) if r.sop_instance_uid == sop),
                      key=lambda r: r.version)
    assert [(r.version, r.superseded) for r in versions] == [(1, False), (2, False)]
    first, resent = versions
    assert first.scorable and first.chosen and first.patient_id != OTHER_PATIENT_ID
    assert resent.patient_id == OTHER_PATIENT_ID and not resent.scorable and not resent.chosen
    assert resent.reason and resent.reason.startswith(f"{CONFLICT} SOP Instance UID already")
