"""What sites really send, through DCMTK ``storescu`` to the real ``triage listen`` process.

Every study is built from the real sample mammograms (``fixtures/images/0_*.png``) wrapped
as DICOM by ``triage.synthetic``; each must end in the documented exam state with the
documented reasons (DESIGN.md "Image classes", "DICOM conventions"):

* extra XCCL and spot-compression views and a For Processing copy beside the four
  standard views -> ready, the extras stored unscorable with their reasons;
* MONOCHROME1, JPEG 2000, no View Code Sequence, one view acquired twice -> ready, the
  later acquisition chosen and the choice audited;
* one breast only -> ready and partial after the maximum wait;
* implants (Breast Implant Present YES, implant-displaced views) -> skipped with reasons;
* a CT -> skipped as another modality;
* non-ASCII patient names (ISO_IR 100, ISO 2022 IR 87) -> ready, names intact on disk
  and never written to the listener's log.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import pydicom
import pytest
from pydicom.dataset import Dataset
from sqlalchemy import select

from tests.conftest import fixtures_path
from tests.servers import free_port, stop_pid, wait_for_port
from triage.db import AuditEvent, Database, Instance, Study, create_database
from triage.synthetic.builders import build_ct_image, build_view, encode, write_exam
from triage.synthetic.png import read_png
from triage.synthetic.specs import StudyIdentity, ViewSpec, study_identity_for_seed
from triage.synthetic.vendors import Photometric, Vendor
from triage.synthetic.views import MammoView, ViewModifier
from triage.vocabulary import ExamStatus, Laterality

QUIET_SECONDS = 1
MAX_WAIT_SECONDS = 8
DEADLINE_SECONDS = 120
LEFT, RIGHT = Laterality.LEFT, Laterality.RIGHT
CC, MLO = MammoView.CC, MammoView.MLO
STANDARD = ((LEFT, CC), (RIGHT, CC), (LEFT, MLO), (RIGHT, MLO))
NAME_LATIN1 = "Müller-Lüdenscheidt^Jürgen"
NAME_JIS = "Yamada^Tarou=山田^太郎=やまだ^たろう"
T = TypeVar("T")


@dataclass
class ListenerProcess:
    proc: subprocess.Popen[bytes]
    port: int
    data_dir: Path
    log: Path
    db: Database


@pytest.fixture(scope="module")
def listener(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ListenerProcess]:
    root = tmp_path_factory.mktemp("listen")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_")}
    env.update(TRIAGE_DATA_DIR=str(root / "data"), TRIAGE_DICOM_HOST="127.0.0.1",
               TRIAGE_DICOM_PORT=str(port), TRIAGE_AE_TITLE="TRIAGE",
               TRIAGE_QUIET_SECONDS=str(QUIET_SECONDS),
               TRIAGE_MAX_WAIT_SECONDS=str(MAX_WAIT_SECONDS), TRIAGE_LOG_LEVEL="INFO",
               TRIAGE_API_PORT="0")
    log = root / "listener.log"
    triage = Path(sys.executable).with_name("triage")
    with log.open("ab") as sink:
        proc = subprocess.Popen([str(triage), "listen"], env=env, stdout=sink,
                                stderr=subprocess.STDOUT)
    db: Database | None = None
    try:
        wait_for_port(port, timeout=60, proc=proc)
        db = create_database(f"sqlite:///{(root / 'data' / 'triage.db').resolve()}")
        yield ListenerProcess(proc, port, root / "data", log, db)
    finally:
        stop_pid(proc)
        if db is not None:
            db.dispose()


@pytest.fixture(scope="module")
def pngs() -> dict[tuple[Laterality, MammoView], Path]:
    images = fixtures_path() / "images"
    return {(lat, view): images / f"0_{lat.value}-{view.value}.png" for lat, view in STANDARD}


def _view(study: StudyIdentity, png: Path, laterality: Laterality, view: MammoView,
          number: int, **options: object) -> Dataset:
    spec = ViewSpec(study=study, laterality=laterality, view=view, instance_number=number,
                    pixels=read_png(png), seed=number)
    return build_view(replace(spec, **options))  # type: ignore[arg-type]


def _send(listener: ListenerProcess, files: list[Path], *extra: str) -> str:
    """storescu the files on one association; every one must be answered Success."""
    result = subprocess.run(
        ["storescu", "-v", "-R", *extra, "-aet", "MODALITY", "-aec", "TRIAGE", "127.0.0.1",
         str(listener.port), *map(str, files)],
        capture_output=True, text=True, timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert output.count("Received Store Response (Success)") == len(files), output
    return output


def _wait_for(check: Callable[[], T | None], what: str) -> T:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while time.monotonic() < deadline:
        value = check()
        if value is not None:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def _settled_exam(listener: ListenerProcess, study_uid: str) -> tuple[Study, list[Instance]]:
    """The exam once the listener has decided it (ready or skipped)."""

    def decided() -> tuple[Study, list[Instance]] | None:
        with listener.db.session() as session:
            study = session.scalars(select(Study).where(
                Study.study_instance_uid == study_uid)).first()
            if study is None or study.status == ExamStatus.RECEIVING:
                return None
            rows = list(session.scalars(select(Instance).where(Instance.study_id == study.id)
                                        .order_by(Instance.id)))
            return study, rows

    return _wait_for(decided, f"exam {study_uid} to leave receiving")


def _by_sop(rows: list[Instance]) -> dict[str, Instance]:
    return {r.sop_instance_uid: r for r in rows}


def test_extra_views_and_for_processing_copy_leave_the_four_views_ready(
        listener: ListenerProcess, pngs: dict, tmp_path: Path) -> None:
    study = study_identity_for_seed(101)
    standard = [_view(study, pngs[key], *key, n) for n, key in enumerate(STANDARD, 1)]
    xccl = _view(study, pngs[(LEFT, CC)], LEFT, MammoView.XCCL, 5)
    spot = _view(study, pngs[(RIGHT, CC)], RIGHT, CC, 6,
                 modifiers=(ViewModifier.SPOT_COMPRESSION,))
    raw = _view(study, pngs[(LEFT, CC)], LEFT, CC, 7, for_processing=True)
    _send(listener, write_exam([*standard, xccl, spot, raw], tmp_path))

    exam, rows = _settled_exam(listener, study.study_uid)
    assert exam.status == ExamStatus.READY and not exam.partial
    assert exam.image_classes == ["ffdm"]
    by_sop = _by_sop(rows)
    assert len(rows) == 7
    assert {r.sop_instance_uid for r in rows if r.chosen} == {
        str(ds.SOPInstanceUID) for ds in standard}
    assert "non-standard view XCCL" in by_sop[xccl.SOPInstanceUID].reason
    assert by_sop[xccl.SOPInstanceUID].view == "XCCL"
    assert "view modifier: spot compression" in by_sop[spot.SOPInstanceUID].reason
    assert "For Processing" in by_sop[raw.SOPInstanceUID].reason
    assert not any(by_sop[ds.SOPInstanceUID].scorable for ds in (xccl, spot, raw))


def test_monochrome1_jpeg2000_without_view_codes_chooses_the_retake(
        listener: ListenerProcess, pngs: dict, tmp_path: Path) -> None:
    study = study_identity_for_seed(102)
    options = {"vendor": Vendor.GE, "photometric": Photometric.MONOCHROME1,
               "include_view_code": False}
    first_take = study.study_datetime.replace(microsecond=0)
    views = [_view(study, pngs[key], *key, n, acquisition_datetime=first_take, **options)
             for n, key in enumerate(STANDARD, 1)]
    retake = _view(study, pngs[(LEFT, CC)], LEFT, CC, 5, **options,
                   acquisition_datetime=first_take + timedelta(minutes=5))
    # the retake is sent first: choosing it must follow acquisition time, not arrival
    datasets = [encode(ds, "jpeg2000") for ds in [retake, *views]]
    files = write_exam(datasets, tmp_path)
    assert all(pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID
               == "1.2.840.10008.1.2.4.90" for f in files)
    assert all("ViewCodeSequence" not in ds for ds in datasets)
    _send(listener, files, "-xv")

    exam, rows = _settled_exam(listener, study.study_uid)
    assert exam.status == ExamStatus.READY and not exam.partial
    by_sop = _by_sop(rows)
    assert by_sop[retake.SOPInstanceUID].chosen
    assert not by_sop[views[0].SOPInstanceUID].chosen  # the first L-CC take
    assert sum(r.chosen for r in rows) == 4
    assert all(r.transfer_syntax_uid == "1.2.840.10008.1.2.4.90" and not r.lossy
               for r in rows)
    assert all(r.scorable for r in rows)
    with listener.db.session() as session:
        choice = session.scalars(select(AuditEvent).where(
            AuditEvent.kind == "view_choice", AuditEvent.study_id == exam.id)).all()
    assert choice and choice[-1].sop_instance_uid == retake.SOPInstanceUID
    stored = pydicom.dcmread(by_sop[retake.SOPInstanceUID].path)
    assert stored.PhotometricInterpretation == "MONOCHROME1"


def test_one_breast_exam_is_ready_and_partial_after_max_wait(
        listener: ListenerProcess, pngs: dict, tmp_path: Path) -> None:
    study = study_identity_for_seed(103)
    views = [_view(study, pngs[(RIGHT, v)], RIGHT, v, n) for n, v in enumerate((CC, MLO), 1)]
    _send(listener, write_exam(views, tmp_path))

    exam, rows = _settled_exam(listener, study.study_uid)
    assert exam.status == ExamStatus.READY and exam.partial
    assert exam.image_classes == ["ffdm"]
    assert (exam.ready_at - exam.first_received_at).total_seconds() >= MAX_WAIT_SECONDS
    assert sorted((r.laterality, r.view) for r in rows if r.chosen) == [("R", "CC"),
                                                                        ("R", "MLO")]


def test_implant_exam_is_skipped_with_the_implant_reasons(
        listener: ListenerProcess, pngs: dict, tmp_path: Path) -> None:
    study = study_identity_for_seed(104)
    views = [_view(study, pngs[key], *key, n, implant_present=True)
             for n, key in enumerate(STANDARD, 1)]
    displaced = [_view(study, pngs[key], *key, n, modifiers=(ViewModifier.IMPLANT_DISPLACED,))
                 for n, key in enumerate(STANDARD[:2], 5)]
    _send(listener, write_exam([*views, *displaced], tmp_path))

    exam, rows = _settled_exam(listener, study.study_uid)
    assert exam.status == ExamStatus.SKIPPED
    assert exam.skip_reason.startswith("no scorable image: ")
    assert "4 × breast implant present" in exam.skip_reason
    assert "view modifier: implant displaced" in exam.skip_reason
    assert len(rows) == 6 and not any(r.scorable or r.chosen for r in rows)


def test_ct_is_stored_and_skipped_as_another_modality(
        listener: ListenerProcess, tmp_path: Path) -> None:
    study = study_identity_for_seed(105)
    _send(listener, write_exam([build_ct_image(study)], tmp_path))

    exam, rows = _settled_exam(listener, study.study_uid)
    assert exam.status == ExamStatus.SKIPPED
    assert "not a mammogram: modality CT" in exam.skip_reason
    assert [(r.image_class, r.modality, r.scorable) for r in rows] == [("other", "CT", False)]
    assert Path(rows[0].path).is_file()


@pytest.mark.parametrize(("seed", "name", "charset"), [
    (106, NAME_LATIN1, ("ISO_IR 100",)),
    (107, NAME_JIS, ("", "ISO 2022 IR 87")),
])
def test_non_ascii_patient_names_arrive_intact_and_stay_out_of_logs(
        listener: ListenerProcess, pngs: dict, tmp_path: Path, seed: int, name: str,
        charset: tuple[str, ...]) -> None:
    study = replace(study_identity_for_seed(seed), patient_name=name, character_set=charset)
    views = [_view(study, pngs[key], *key, n) for n, key in enumerate(STANDARD, 1)]
    files = write_exam(views, tmp_path)
    _send(listener, files)

    exam, rows = _settled_exam(listener, study.study_uid)
    assert exam.status == ExamStatus.READY and not exam.partial
    assert exam.patient_id == study.patient_id
    for row in rows:
        stored = pydicom.dcmread(row.path, stop_before_pixels=True)
        assert str(stored.PatientName) == name
        assert list(stored.SpecificCharacterSet if stored["SpecificCharacterSet"].VM > 1
                    else [stored.SpecificCharacterSet]) == list(charset)
    log_text = listener.log.read_text(encoding="utf-8", errors="replace")
    assert study.study_uid in log_text  # the log did record this exam, by UID
    for part in name.replace("=", "^").split("^"):
        assert part not in log_text
