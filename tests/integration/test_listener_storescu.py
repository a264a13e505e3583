"""`triage listen` receiving from DCMTK storescu: spool, DB rows, views, readiness."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import select

from tests.integration.listener_helpers import (
    TRIAGE,
    ListenerProcess,
    encode_data_set,
    image_dataset,
    send_raw,
    storescu,
    write_received_file,
)
from triage.db import Association, AuditEvent, Instance, Study
from triage.dicom.spool import dataset_digest
from triage.vocabulary import ExamStatus

pytestmark = pytest.mark.skipif(shutil.which("storescu") is None, reason="DCMTK not installed")


@pytest.fixture(scope="module")
def listener(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ListenerProcess]:
    process = ListenerProcess(tmp_path_factory.mktemp("listener") / "data")
    process.start()
    yield process
    process.stop()


def synthetic_exam(out: Path, seed: int, *options: str) -> dict[str, Any]:
    """`triage synthetic exam` (small matrix); returns its JSON summary."""
    result = subprocess.run([TRIAGE, "synthetic", "exam", "--out", str(out), "--seed", str(seed),
                             "--scale", "0.08", *options],
                            capture_output=True, text=True, check=True, timeout=300)
    return json.loads(result.stdout)


def instances_of(listener: ListenerProcess, study_uid: str) -> list[Instance]:
    db = listener.database()
    try:
        with db.session() as session:
            return list(session.scalars(select(Instance).join(Study)
                                        .where(Study.study_instance_uid == study_uid)))
    finally:
        db.dispose()


def study_status(listener: ListenerProcess, study_uid: str) -> str | None:
    db = listener.database()
    try:
        with db.session() as session:
            return session.scalar(select(Study.status)
                                  .where(Study.study_instance_uid == study_uid))
    finally:
        db.dispose()


def inflated(path: Path) -> bytes:
    """The data set bytes of a deflated DICOM file (after its file meta group), inflated."""
    raw = path.read_bytes()
    meta_end = 144 + int.from_bytes(raw[140:144], "little")  # (0002,0000) group length
    return zlib.decompress(raw[meta_end:], -zlib.MAX_WBITS)


def wait_for(predicate, timeout: float = 30.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.25)
    return bool(predicate())


def test_storescu_exam_is_spooled_recorded_and_becomes_ready(
        listener: ListenerProcess, tmp_path: Path) -> None:
    summary = synthetic_exam(tmp_path / "exam", seed=11)
    files = [Path(i["file"]) for i in summary["instances"]]
    sent = storescu(listener.port, files)
    assert sent.returncode == 0, sent.stderr
    assert sent.stderr.count("Received Store Response (Success)") == len(files)

    rows = instances_of(listener, str(summary["study_instance_uid"]))
    by_uid = {r.sop_instance_uid: r for r in rows}
    assert len(rows) == len(files)
    for item, path in zip(summary["instances"], files, strict=True):
        row = by_uid[item["sop_instance_uid"]]
        kept = Path(row.path)
        assert kept.is_relative_to(listener.data_dir / "spool")
        # the spool holds the data set exactly as it was sent
        assert dataset_digest(kept)[0] == row.content_digest == dataset_digest(path)[0]
        assert (row.laterality, row.view) == (item["laterality"], item["view"])
        assert row.transfer_syntax_uid == dcmread(path, stop_before_pixels=True) \
            .file_meta.TransferSyntaxUID
    assert list((listener.data_dir / "spool" / "tmp").iterdir()) == []

    assert wait_for(lambda: study_status(listener, str(summary["study_instance_uid"]))
                    == ExamStatus.READY.value)
    db = listener.database()
    with db.session() as session:
        association = session.get(Association, rows[0].association_id)
        assert association is not None and not association.is_open
        assert association.calling_ae == "STORESCU" and association.instances_received == 4
    db.dispose()


COMPRESSIONS = [
    # (tool command producing the file, storescu proposal option)
    (["dcmcrle"], "-xr"),
    (["dcmcjpls", "--encode-lossless"], "-xt"),
    (["dcmcjpeg", "--encode-lossless-sv1"], "-xs"),
    (["dcmconv", "+td"], "-xd"),
    (["dcmconv", "+tb"], "-xb"),
    (["dcmconv", "+ti"], "-xi"),
]


def test_compressed_and_other_transfer_syntaxes_are_kept_as_sent(
        listener: ListenerProcess, tmp_path: Path) -> None:
    summary = synthetic_exam(tmp_path / "exam", 12)
    sources = [Path(i["file"]) for i in summary["instances"]]
    j2k = synthetic_exam(tmp_path / "j2k", 13, "--transfer-syntax", "jpeg2000")
    cases: list[tuple[Path, str]] = [(Path(j2k["instances"][0]["file"]), "-xv")]
    for index, (tool, option) in enumerate(COMPRESSIONS):
        # a SOP Instance UID of its own, so that no file is a duplicate of another
        ds = dcmread(sources[index % len(sources)])
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        renamed, target = tmp_path / f"source-{index}.dcm", tmp_path / f"converted-{index}.dcm"
        ds.save_as(renamed)
        subprocess.run([*tool, str(renamed), str(target)], check=True, capture_output=True)
        cases.append((target, option))
    for path, option in cases:
        header = dcmread(path, stop_before_pixels=True)
        sent = storescu(listener.port, [path], options=[option])
        assert sent.returncode == 0 and "Store Response (Success)" in sent.stderr, \
            (option, sent.stderr)
        rows = [r for r in instances_of(listener, str(header.StudyInstanceUID))
                if r.transfer_syntax_uid == header.file_meta.TransferSyntaxUID
                and r.sop_instance_uid == header.SOPInstanceUID]
        assert len(rows) == 1, (option, header.file_meta.TransferSyntaxUID)
        kept = Path(rows[0].path)
        if header.file_meta.TransferSyntaxUID.is_deflated:
            # storescu re-deflates what it sends: the same data set, other deflate blocks
            assert inflated(kept) == inflated(path), option
        else:
            assert dataset_digest(kept)[0] == dataset_digest(path)[0], option


def test_wrapped_real_images_are_received(listener: ListenerProcess, tmp_path: Path,
                                          fixtures_dir: Path) -> None:
    from triage.synthetic.builders import write_exam
    from triage.synthetic.png import exam_from_pngs
    from triage.synthetic.specs import ExamSpec
    from triage.synthetic.views import MammoView
    from triage.vocabulary import Laterality, View

    catalogue = json.loads((fixtures_dir / "images.json").read_text())
    chosen = {name: info for name, info in catalogue.items()
              if info.get("kind") == "mammogram" and name.startswith("0_")}
    paths: dict[tuple[Laterality, View | MammoView], Path] = {
        (Laterality(info["laterality"]), View(info["view_angle"])): fixtures_dir / "images" / name
        for name, info in chosen.items()}
    datasets = exam_from_pngs(paths, ExamSpec(seed=77))
    files = write_exam(datasets, tmp_path / "wrapped")
    sent = storescu(listener.port, files)
    assert sent.returncode == 0 and sent.stderr.count("(Success)") == len(files)
    rows = instances_of(listener, str(datasets[0].StudyInstanceUID))
    assert sorted((r.laterality, r.view) for r in rows) == sorted(
        (info["laterality"], info["view_angle"]) for info in chosen.values())
    shapes = {(r.laterality, r.view): (r.rows, r.columns) for r in rows}
    for info in chosen.values():
        assert shapes[(info["laterality"], info["view_angle"])] == tuple(info["shape"])


def test_same_instance_twice_is_stored_once(listener: ListenerProcess, tmp_path: Path) -> None:
    summary = synthetic_exam(tmp_path / "exam", 14)
    path = Path(summary["instances"][0]["file"])
    for _ in range(2):
        sent = storescu(listener.port, [path])
        assert sent.returncode == 0 and "Store Response (Success)" in sent.stderr
    rows = instances_of(listener, str(summary["study_instance_uid"]))
    assert len(rows) == 1
    study_dir = Path(rows[0].path).parent
    assert [p for p in study_dir.iterdir()] == [Path(rows[0].path)]
    db = listener.database()
    with db.session() as session:
        duplicates = session.scalars(select(AuditEvent).where(
            AuditEvent.sop_instance_uid == rows[0].sop_instance_uid,
            AuditEvent.kind == "duplicate_instance")).all()
    db.dispose()
    assert len(duplicates) == 1


def test_changed_content_under_the_same_uid_is_kept_as_a_new_version(
        listener: ListenerProcess, tmp_path: Path) -> None:
    summary = synthetic_exam(tmp_path / "exam", 15)
    path = Path(summary["instances"][0]["file"])
    ds = dcmread(path)
    ds.PatientComments = "corrected"
    changed = tmp_path / "changed.dcm"
    ds.save_as(changed)
    for p in (path, changed):
        sent = storescu(listener.port, [p])
        assert sent.returncode == 0 and "Store Response (Success)" in sent.stderr
    rows = sorted(instances_of(listener, str(summary["study_instance_uid"])),
                  key=lambda r: r.version)
    assert [r.version for r in rows] == [1, 2]
    assert all(Path(r.path).exists() for r in rows)
    assert rows[1].content_digest == dataset_digest(changed)[0]


def _memory_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


@pytest.mark.parametrize("client", ["storescu", "pynetdicom"])
def test_a_large_object_goes_to_disk_not_into_memory(tmp_path: Path, client: str) -> None:
    ds = image_dataset(4096, 3328, sop_class="1.2.840.10008.5.1.4.1.1.13.1.3")
    ds.NumberOfFrames = 6
    ds.PixelData = bytes(range(256)) * (4096 * 3328 * 2 * 6 // 256)
    big = write_received_file(tmp_path / "dbt.dcm", encode_data_set(ds),
                              sop_class=str(ds.SOPClassUID), sop_instance=str(ds.SOPInstanceUID))
    size_kib = big.stat().st_size // 1024
    del ds
    listener = ListenerProcess(tmp_path / "data")
    listener.start()
    try:
        assert listener.proc is not None
        pid = listener.proc.pid
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset the peak to the current size
        before = _memory_kib(pid, "VmRSS")
        if client == "storescu":
            sent = storescu(listener.port, [big], options=["-R"])
            assert sent.returncode == 0 and "Store Response (Success)" in sent.stderr
        else:  # pynetdicom sends PDUs as large as we advertise
            assert [r.status for r in send_raw([big], listener.destination())] == [0]
        growth = _memory_kib(pid, "VmHWM") - before
        assert growth < size_kib // 4, f"peak grew by {growth} KiB for a {size_kib} KiB object"
        (row,) = instances_of(listener, str(dcmread(big, stop_before_pixels=True)
                                             .StudyInstanceUID))
        assert dataset_digest(Path(row.path))[0] == dataset_digest(big)[0]
    finally:
        listener.stop()
