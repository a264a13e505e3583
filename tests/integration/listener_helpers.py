"""Helpers for tests that talk to a real ``triage listen`` process.

* ``ListenerProcess``: ``triage listen`` as a subprocess on a free port with its own data
  dir and environment; ``start`` waits for a C-ECHO answer; ``stop`` (SIGTERM), ``kill``
  (SIGKILL); ``log_records`` parses its JSON log lines; ``database`` opens its DB.
* ``echo`` / ``storescu``: DCMTK's echoscu and storescu (the real client).
* ``send_raw``: pynetdicom SCU sending pre-encoded data set bytes exactly as given (for
  broken objects storescu would refuse to read); ``write_received_file`` lays such bytes out
  as a DICOM file (valid File Meta Information, then the bytes).
* ``image_dataset`` / ``encode_data_set`` / ``malformed_corpus``: small test objects, and the
  corpus of broken ones with the status ``triage.dicom.validate`` documents for each.

Every process is started on 127.0.0.1 and stopped by the PID it was started with.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import warnings
import zlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import UID, generate_uid

from triage.config import Destination, Settings, load_settings
from triage.db import Database, create_database
from triage.dicom import validate
from triage.dicom.sender import SendResult, send_files

TRIAGE = str(Path(sys.executable).parent / "triage")
EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
RLE = "1.2.840.10008.1.2.5"
MG_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
UID_PREFIX = "1.2.826.0.1.3680043.8.498."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- DCMTK clients ------------------------------------------------------------------------
def echo(port: int, called_ae: str = "TRIAGE", calling_ae: str = "ECHOSCU") -> bool:
    result = subprocess.run(["echoscu", "-aet", calling_ae, "-aec", called_ae, "127.0.0.1",
                             str(port)], capture_output=True, timeout=30)
    return result.returncode == 0


def storescu(port: int, files: Iterable[Path], *, called_ae: str = "TRIAGE",
             calling_ae: str = "STORESCU", options: Sequence[str] = (),
             timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Send with DCMTK storescu (verbose, so each response status is in the output)."""
    return subprocess.run(["storescu", "-v", "-aet", calling_ae, "-aec", called_ae, *options,
                           "127.0.0.1", str(port), *map(str, files)],
                          capture_output=True, text=True, timeout=timeout)


# ---- the listener as a process ----------------------------------------------------------------
@dataclass
class ListenerProcess:
    """``triage listen`` in a subprocess with its own data dir, port and environment."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    ae_title: str = "TRIAGE"
    database_url: str = ""
    env: dict[str, str] = field(default_factory=dict)  # extra TRIAGE_* settings
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}-listener.log"

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_")}
        env.update({
            "TRIAGE_DATA_DIR": str(self.data_dir), "TRIAGE_DICOM_HOST": "127.0.0.1",
            "TRIAGE_DICOM_PORT": str(self.port), "TRIAGE_AE_TITLE": self.ae_title,
            "TRIAGE_QUIET_SECONDS": "1", "TRIAGE_LOG_JSON": "true", "TRIAGE_LOG_LEVEL": "INFO",
            "TRIAGE_API_PORT": "0",  # listen mounts the API: a free port
        })
        if self.database_url:
            env["TRIAGE_DATABASE_URL"] = self.database_url
        env.update(self.env)
        return env

    def settings(self) -> Settings:
        env = self.environment()
        return load_settings(data_dir=Path(env["TRIAGE_DATA_DIR"]),
                             database_url=env.get("TRIAGE_DATABASE_URL", ""),
                             ae_title=self.ae_title)

    def database(self) -> Database:
        return create_database(self.settings().resolved_database_url)

    def start(self, timeout: float = 90.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([TRIAGE, "listen"], env=self.environment(),
                                         stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"triage listen exited with {self.proc.returncode}:\n"
                                   f"{self.log_path.read_text()[-3000:]}")
            if echo(self.port, self.ae_title):
                return
            time.sleep(0.3)
        self.kill()
        raise TimeoutError(f"triage listen did not answer C-ECHO on {self.port}")

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout)
        code = self.proc.returncode
        self.proc = None
        return code

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind happens in the listener."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None

    def log_records(self) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        if not self.log_path.exists():
            return records
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return records

    def destination(self) -> Destination:
        return Destination(ae_title=self.ae_title, host="127.0.0.1", port=self.port)


@contextmanager
def running_listener(data_dir: Path, **kwargs: Any) -> Iterator[ListenerProcess]:
    listener = ListenerProcess(data_dir, **kwargs)
    listener.start()
    try:
        yield listener
    finally:
        listener.stop()


# ---- test objects -----------------------------------------------------------------------------
def image_dataset(rows: int = 16, columns: int = 16, bits: int = 16, *,
                  sop_class: str = MG_FOR_PRESENTATION, study_uid: str | None = None,
                  sop_uid: str | None = None, pixel_bytes: bytes | None = None,
                  with_sequence: bool = False) -> Dataset:
    """A small image with only the tags a structural check looks at (group 0008-0028, pixels)."""
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid or generate_uid(UID_PREFIX)
    ds.Modality = "MG"
    ds.PatientID = "TEST"
    ds.StudyInstanceUID = study_uid or generate_uid(UID_PREFIX)
    ds.SeriesInstanceUID = generate_uid(UID_PREFIX)
    if with_sequence:
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = (
            "399162004", "SCT", "cranio-caudal")
        modifier = Dataset()
        modifier.CodeValue, modifier.CodingSchemeDesignator = "R-102D2", "SRT"
        code.ViewModifierCodeSequence = [modifier]
        ds.ViewCodeSequence = [code]
        ds["ViewCodeSequence"].is_undefined_length = True
        code.is_undefined_length_sequence_item = True
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, columns, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = (
        bits, bits, bits - 1, 0)
    nbytes = (rows * columns * bits + 7) // 8
    data = pixel_bytes if pixel_bytes is not None else bytes(range(256)) * (nbytes // 256 + 1)
    if pixel_bytes is None:
        data = data[:nbytes]
    ds.PixelData = data + (b"\0" if len(data) % 2 else b"")
    ds["PixelData"].VR = "OW" if bits > 8 else "OB"
    return ds


def text_sr_dataset() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = BASIC_TEXT_SR
    ds.SOPInstanceUID = generate_uid(UID_PREFIX)
    ds.Modality = "SR"
    ds.StudyInstanceUID = generate_uid(UID_PREFIX)
    ds.SeriesInstanceUID = generate_uid(UID_PREFIX)
    ds.ValueType = "CONTAINER"
    return ds


def encode_data_set(ds: Dataset, transfer_syntax: str = EXPLICIT_LE) -> bytes:
    """The data set bytes as a sender puts them on the wire (no file meta group)."""
    ts = UID(transfer_syntax)
    fp = DicomBytesIO()
    fp.is_little_endian = ts.is_little_endian
    fp.is_implicit_VR = ts.is_implicit_VR
    write_dataset(fp, ds)
    raw = fp.getvalue()
    if ts.is_deflated:
        deflater = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        raw = deflater.compress(raw) + deflater.flush()
    return raw


def encapsulated_image(frame: bytes = b"\x01\x02\x03\x04" * 8, **kwargs: Any) -> Dataset:
    """An image whose pixel data is encapsulated (for an RLE / JPEG transfer syntax)."""
    ds = image_dataset(**kwargs)
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return ds


def meta_group(sop_class: str, sop_instance: str, transfer_syntax: str) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    meta.TransferSyntaxUID = UID(transfer_syntax)
    buffer = DicomBytesIO()
    buffer.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(buffer, meta)
    return buffer.getvalue()


def write_received_file(path: Path, data_set: bytes, *, sop_class: str, sop_instance: str,
                        transfer_syntax: str = EXPLICIT_LE) -> Path:
    """A DICOM file: valid file meta information, then ``data_set`` exactly as given."""
    path.write_bytes(meta_group(sop_class, sop_instance, transfer_syntax) + data_set)
    return path


def send_raw(files: Sequence[Path], destination: Destination,
             calling_ae: str = "RAWSCU") -> list[SendResult]:
    """Send files' data set bytes as they are (pynetdicom SCU, no decoding)."""
    return send_files(list(files), destination, calling_ae)


@dataclass(frozen=True)
class BrokenObject:
    name: str
    data_set: bytes
    sop_class: str  # in the C-STORE request (and the file meta group used to send it)
    sop_instance: str
    expected_status: int
    transfer_syntax: str = EXPLICIT_LE


def _element(tag: tuple[int, int], vr: bytes, value: bytes, long_form: bool = False,
             length: int | None = None) -> bytes:
    size = len(value) if length is None else length
    head = struct.pack("<HH", *tag) + vr
    head += struct.pack("<HL", 0, size) if long_form else struct.pack("<H", size)
    return head + value


def malformed_corpus() -> list[BrokenObject]:
    """Broken storage objects, each with the status validate.py documents for it."""
    corpus: list[BrokenObject] = []

    def add(name: str, ds: Dataset, data: bytes, status: int, *,
            sop_class: str | None = None, sop_instance: str | None = None) -> None:
        corpus.append(BrokenObject(name, data, sop_class or str(ds.SOPClassUID),
                                   sop_instance or str(ds.SOPInstanceUID), status))

    ds = image_dataset(32, 32)
    good = encode_data_set(ds)
    add("truncated_in_pixel_data", ds, good[:-100], validate.STATUS_TRUNCATED)
    ds = image_dataset(32, 32)
    add("truncated_in_header", ds, encode_data_set(ds)[:61], validate.STATUS_TRUNCATED)
    ds = image_dataset(8, 8)
    part10 = meta_group(str(ds.SOPClassUID), str(ds.SOPInstanceUID), EXPLICIT_LE)
    add("part10_preamble_inside_data_set", ds, part10 + encode_data_set(ds),
        validate.STATUS_CANNOT_UNDERSTAND)
    ds = image_dataset(8, 8)
    noise = bytes((i * 73 + 41) % 251 for i in range(2000))
    add("random_bytes", ds, noise, validate.STATUS_CANNOT_UNDERSTAND)
    ds = image_dataset(8, 8)
    uid = str(ds.SOPInstanceUID)
    del ds.SOPInstanceUID
    add("missing_sop_instance_uid", ds, encode_data_set(ds), validate.STATUS_DATASET_MISMATCH,
        sop_instance=uid)
    ds = image_dataset(8, 8)
    del ds.StudyInstanceUID
    add("missing_study_instance_uid", ds, encode_data_set(ds),
        validate.STATUS_DATASET_MISMATCH)
    ds = image_dataset(8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid UID we want
        ds.StudyInstanceUID = "1.2.abc.4"
    add("invalid_study_instance_uid", ds, encode_data_set(ds),
        validate.STATUS_DATASET_MISMATCH)
    ds = image_dataset(8, 8)
    add("sop_class_differs_from_negotiated", ds, encode_data_set(ds),
        validate.STATUS_DATASET_MISMATCH, sop_class=SECONDARY_CAPTURE)
    ds = image_dataset(8, 8)
    del ds.PixelData
    add("image_without_pixel_data", ds, encode_data_set(ds), validate.STATUS_DATASET_MISMATCH)
    ds = image_dataset(8, 8)
    raw = encode_data_set(ds)
    rows = struct.pack("<HH", 0x0028, 0x0010) + b"US" + struct.pack("<H", 2)
    at = raw.index(rows)
    add("wrong_vr_length", ds, raw[:at + 6] + struct.pack("<H", 3) + raw[at + 8:at + 10]
        + b"\0" + raw[at + 10:], validate.STATUS_CANNOT_UNDERSTAND)
    ds = image_dataset(8, 8)
    raw = encode_data_set(ds)
    pixel_at = raw.index(struct.pack("<HH", 0x7FE0, 0x0010))
    absurd = _element((0x0029, 0x1010), b"OB", b"\0" * 16, long_form=True, length=0x7FFFFFF0)
    add("absurd_declared_length", ds, raw[:pixel_at] + absurd + raw[pixel_at:],
        validate.STATUS_TRUNCATED)
    ds = image_dataset(16, 16, pixel_bytes=b"\0" * 100)
    add("pixel_data_shorter_than_rows_x_columns", ds, encode_data_set(ds),
        validate.STATUS_PIXEL_LENGTH)
    return corpus
