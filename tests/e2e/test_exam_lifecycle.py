"""Realistic exams end with a result that describes the images that were scored, through the
product's own entry points: DCMTK storescu -> `triage serve` (SQLite, embedded worker) ->
scoring -> outputs -> a real Orthanc archive.

* a corrected image sent again under the same SOP Instance UID re-opens the exam; a new run
  is stored, a new SR reaches the archive naming the SR it replaces, the old run stays;
* a DBT exam whose views came both as 1 mm slices and as slabs is scored on the slices and
  delivered, its overlays and SR referencing exactly the scored slices;
* a one-breast exam is flagged partial (NOT TRIAGED with the reason) in the DB, both SRs
  and the overlay.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from sqlalchemy import select

from tests.e2e.conftest import ArchiveServer
from tests.e2e.test_results_to_archive import _archive_address, _archived, _listener_up, _outbox
from tests.integration.listener_helpers import free_port, storescu
from tests.integration.product_helpers import Stack, exam_status, runs_of, small_exam, wait_until
from triage.db import Study
from triage.models import ensure_demo_weights
from triage.synthetic import ExamSpec, generate_dbt_exam
from triage.vocabulary import NOT_TRIAGED, OutputKind

TID1500 = "1.2.840.10008.5.1.4.1.1.88.34"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, ArchiveServer, int]]:
    """One archive and one embedded product (GMIC test member for FFDM, 3D-GMIC test member
    for DBT), max wait short so that an incomplete exam is decided within the test."""
    root = tmp_path_factory.mktemp("lifecycle")
    archive = ArchiveServer(root=root / "orthanc")
    archive.root.mkdir()
    archive.start()
    port = free_port()
    ensemble = json.dumps([{"name": "gmic-testing-small", "weight": 0.5},
                           {"name": "gmic3d-testing-small", "weight": 0.5, "modality": "dbt"}])
    stack = Stack(root / "stack", extra_env={
        "TRIAGE_ARCHIVE": _archive_address(archive), "TRIAGE_SEND_UNVERIFIED_CAD": "1",
        "TRIAGE_DICOM_PORT": str(port), "TRIAGE_ENSEMBLE": ensemble,
        "TRIAGE_MAX_WAIT_SECONDS": "8"})
    try:
        ensure_demo_weights(stack.settings)
        stack.spawn("serve")
        _listener_up(stack, port)
        yield stack, archive, port
    finally:
        stack.close()
        archive.destroy()


def _send(port: int, files: list[Path], *options: str) -> None:
    result = storescu(port, files, options=list(options))
    assert result.returncode == 0, result.stdout + result.stderr


def _texts(ds: pydicom.Dataset) -> list[str]:
    """Every TEXT value of an SR content tree (and CAD SR algorithm parameters)."""
    found = [str(ds.TextValue)] if "TextValue" in ds else []
    for item in ds.get("ContentSequence", []):
        found += _texts(item)
    return found


def _sr_of_run(archive: ArchiveServer, tmp: Path, sop_uid: str) -> pydicom.Dataset:
    archived = _archived(archive, tmp)
    assert sop_uid in archived, f"SR {sop_uid} is not in the archive"
    return pydicom.dcmread(archived[sop_uid][1])


def test_corrected_image_under_the_same_uid_is_rescored_and_its_sr_names_the_replaced_one(
    site: tuple[Stack, ArchiveServer, int], tmp_path: Path
) -> None:
    stack, archive, port = site
    uid, files = small_exam(tmp_path / "exam", seed=21)
    _send(port, files)
    wait_until(lambda: exam_status(stack.db, uid) == "delivered", 240, "first delivery",
               stack.logs)
    first = runs_of(stack.db, uid)
    assert [r.status for r in first] == ["succeeded"]
    old_sr = first[0].details["outputs"][OutputKind.SR_TID1500.value]["instance"]

    # the modality corrects one image's pixels and sends it again under the same UID
    corrected = tmp_path / "corrected.dcm"
    ds = pydicom.dcmread(files[0])
    pixels = ds.pixel_array.copy()
    pixels[: pixels.shape[0] // 3] = np.clip(pixels[: pixels.shape[0] // 3].astype(np.int32)
                                             + 200, 0, 4095).astype(pixels.dtype)
    ds.PixelData = pixels.tobytes()
    ds.save_as(corrected)
    _send(port, [corrected])

    def rescored() -> bool:
        runs = runs_of(stack.db, uid)
        return exam_status(stack.db, uid) == "delivered" and len(runs) == 2
    wait_until(rescored, 240, "re-scored and delivered again", stack.logs)
    runs = runs_of(stack.db, uid)
    assert all(r.status == "succeeded" for r in runs)  # the old run stays in history
    assert runs[0].instances_digest != runs[1].instances_digest
    new = max(runs, key=lambda r: r.id)
    new_sr = new.details["outputs"][OutputKind.SR_TID1500.value]["instance"]
    assert new_sr != old_sr
    sr = _sr_of_run(archive, tmp_path / "archive", new_sr)
    predecessors = [ref.ReferencedSOPInstanceUID
                    for study in sr.PredecessorDocumentsSequence
                    for series in study.ReferencedSeriesSequence
                    for ref in series.ReferencedSOPSequence]
    assert predecessors == [old_sr]
    assert old_sr in _archived(archive, tmp_path / "archive2")  # the old SR is not lost
    # every output of the new run went out once; the old run's rows are untouched
    rows = _outbox(stack, uid)
    assert {r.run_id for r in rows} == {r.id for r in runs}
    assert all(r.status == "sent" for r in rows)


def test_dbt_exam_sent_as_slices_and_slabs_is_scored_on_the_slices_and_delivered(
    site: tuple[Stack, ArchiveServer, int], tmp_path: Path
) -> None:
    stack, archive, port = site
    summary = generate_dbt_exam(ExamSpec(seed=5, scale=0.25), tmp_path / "dbt", slices=6,
                                slab_thickness_mm=3.0)
    thin = [i for i in summary.instances if i.slab_thickness_mm is None]
    slabs = [i for i in summary.instances if i.slab_thickness_mm is not None]
    assert len(thin) == len(slabs) == 4
    uid = summary.study_instance_uid
    _send(port, [i.path for i in thin + slabs], "-R")  # slabs last: the latest acquired
    wait_until(lambda: exam_status(stack.db, uid) in ("delivered", "failed"), 300,
               "DBT exam finished", stack.logs)
    with stack.db.session() as session:
        study = session.scalars(select(Study).where(Study.study_instance_uid == uid)).one()
        assert study.status == "delivered", study.failure_reason
    runs = runs_of(stack.db, uid)
    assert [r.status for r in runs] == ["succeeded"]
    assert sorted(runs[0].details["scored_sop_instance_uids"]) == sorted(
        i.sop_instance_uid for i in thin)
    archived = _archived(archive, tmp_path / "archive")
    overlays = [pydicom.dcmread(path) for tags, path in archived.values()
                if tags.get("SeriesDescription", "").endswith("not for diagnosis")
                and tags.get("StudyInstanceUID") == uid and tags.get("Modality") == "OT"]
    sources = {str(o.SourceImageSequence[0].ReferencedSOPInstanceUID) for o in overlays}
    assert sources == {i.sop_instance_uid for i in thin}


def test_one_breast_exam_is_flagged_partial_in_the_db_both_srs_and_the_overlay(
    site: tuple[Stack, ArchiveServer, int], tmp_path: Path
) -> None:
    stack, archive, port = site
    uid, files = small_exam(tmp_path / "exam", seed=23)
    left = [f for f in files if str(pydicom.dcmread(f, stop_before_pixels=True)
                                    .ImageLaterality) == "L"]
    assert len(left) == 2
    _send(port, left)
    wait_until(lambda: exam_status(stack.db, uid) == "delivered", 240, "partial exam delivered",
               stack.logs)
    run = runs_of(stack.db, uid)[0]
    assert run.partial and run.category == NOT_TRIAGED
    assert any("no right breast" in gap for gap in run.coverage_gaps), run.coverage_gaps
    assert run.not_triaged_reason and "partial exam" in run.not_triaged_reason
    outputs = {r.kind: r.sop_instance_uid for r in _outbox(stack, uid)}
    archived = _archived(archive, tmp_path / "archive")
    for kind in (OutputKind.SR_TID1500.value, OutputKind.SR_MAMMO_CAD.value):
        sr = pydicom.dcmread(archived[outputs[kind]][1])
        assert sr.CompletionFlag == "PARTIAL"
        assert any(t.startswith("PARTIAL EXAM: no right breast") for t in _texts(sr)), kind
    overlay = pydicom.dcmread(archived[outputs[OutputKind.SC_OVERLAY.value]][1])
    assert "PARTIAL EXAM" in str(overlay.ImageComments)


def test_shadow_mode_keeps_unverified_results_out_of_the_archive(tmp_path: Path) -> None:
    """By default (TRIAGE_SEND_UNVERIFIED unset) a run with unverified weights is written to
    the local outputs folder and the DB; the configured archive receives nothing."""
    archive = ArchiveServer(root=tmp_path / "orthanc")
    archive.root.mkdir()
    archive.start()
    port = free_port()
    stack = Stack(tmp_path / "stack", extra_env={
        "TRIAGE_ARCHIVE": _archive_address(archive), "TRIAGE_DICOM_PORT": str(port),
        "TRIAGE_SEND_UNVERIFIED": "0"})
    try:
        assert not stack.settings.send_unverified
        stack.spawn("serve")
        _listener_up(stack, port)
        uid, files = small_exam(tmp_path / "exam", seed=25)
        _send(port, files)
        wait_until(lambda: exam_status(stack.db, uid) == "delivered", 240, "delivered locally",
                   stack.logs)
        rows = _outbox(stack, uid)
        assert rows and {r.destination for r in rows} == {"local-folder"}
        for row in rows:
            assert Path(row.path).is_file() and Path(row.path).is_relative_to(
                stack.settings.outputs_dir)
        assert archive.receipts() == {}
        assert archive.get("/instances") == []
    finally:
        stack.close()
        archive.destroy()
