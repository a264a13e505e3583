"""`triage send`: files leave as stored, one context per transfer syntax, failures reported."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import cast

import pytest
from pydicom import dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from tests.integration.listener_helpers import (
    TRIAGE,
    encode_data_set,
    image_dataset,
    malformed_corpus,
    running_listener,
    write_received_file,
)
from tests.servers import OrthancServer
from triage.dicom.spool import dataset_digest

pytestmark = pytest.mark.skipif(shutil.which("Orthanc") is None, reason="Orthanc not installed")


def files_in_several_transfer_syntaxes(out: Path) -> list[Path]:
    """One small image per transfer syntax, each with its own SOP Instance UID."""
    paths = []
    for index, syntax in enumerate([ExplicitVRLittleEndian, RLELossless, JPEG2000Lossless,
                                    JPEGLSLossless, ExplicitVRLittleEndian]):
        ds = image_dataset(64, 48, bits=16)
        ds.BitsStored, ds.HighBit = 12, 11
        ds.PixelData = bytes((i * 7) % 251 for i in range(64 * 48)) * 2
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        if syntax != ExplicitVRLittleEndian:
            ds.compress(syntax)
        ds.SOPInstanceUID = generate_uid()
        path = out / f"{index}-{syntax.name.split()[0]}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def send(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TRIAGE, "send", *args], capture_output=True, text=True, timeout=300)


def test_send_to_orthanc_keeps_every_transfer_syntax(tmp_path: Path,
                                                     orthanc: OrthancServer) -> None:
    (tmp_path / "out").mkdir()
    files = files_in_several_transfer_syntaxes(tmp_path / "out")
    done = send(str(tmp_path / "out"), "--host", "127.0.0.1", "--port", str(orthanc.dicom_port),
                "--called-aet", orthanc.ae_title, "--calling-aet", "TRIAGE")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("0x0000  stored") == len(files)
    stored = {}
    for oid in cast(list[str], orthanc.get("/instances")):
        tags = cast(dict[str, str], orthanc.get(f"/instances/{oid}/simplified-tags"))
        syntax = orthanc.get_bytes(f"/instances/{oid}/metadata/TransferSyntax").decode()
        stored[tags["SOPInstanceUID"]] = (syntax, oid)
    for path in files:
        header = dcmread(path, stop_before_pixels=True)
        syntax, oid = stored[str(header.SOPInstanceUID)]
        assert syntax == header.file_meta.TransferSyntaxUID  # no transcoding on the way
        archived = tmp_path / f"{oid}.dcm"
        archived.write_bytes(orthanc.get_bytes(f"/instances/{oid}/file"))
        assert dataset_digest(archived)[0] == dataset_digest(path)[0]


def test_send_reports_each_status_and_exits_non_zero_when_one_fails(tmp_path: Path) -> None:
    broken = malformed_corpus()[0]
    bad = write_received_file(tmp_path / "bad.dcm", broken.data_set, sop_class=broken.sop_class,
                              sop_instance=broken.sop_instance)
    ds = image_dataset(8, 8)
    good = write_received_file(tmp_path / "good.dcm", encode_data_set(ds),
                               sop_class=str(ds.SOPClassUID), sop_instance=str(ds.SOPInstanceUID))
    with running_listener(tmp_path / "data") as listener:
        done = send(str(good), str(bad), "--host", "127.0.0.1", "--port", str(listener.port),
                    "--called-aet", listener.ae_title)
    assert done.returncode == 1
    lines = {line.split()[2]: line for line in done.stdout.splitlines() if "  " in line
             and line.split()[0].startswith(("0x", "-"))}
    assert lines[str(good)].split()[:2] == ["0x0000", "stored"]
    assert lines[str(bad)].split()[:2] == [f"0x{broken.expected_status:04X}", "permanent"]
    assert "1 of 2 stored" in done.stdout
