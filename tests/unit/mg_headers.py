"""Small DICOM builders for the classification and assembly tests (pydicom only)."""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy import select

from triage.config import Settings
from triage.db import AuditEvent, Database, Instance, Study
from triage.db.states import set_status
from triage.dicom.classify import classify_instance
from triage.dicom.records import IngestOutcome, StoredObject
from triage.exams import evaluate_readiness, record_instance
from triage.vocabulary import ExamStatus

MG = "1.2.840.10008.5.1.4.1.1.1.2"
VIEW_SCT = {"CC": ("399162004", "cranio-caudal"), "MLO": ("399368009", "medio-lateral oblique")}


def code_item(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def mg_header(
    laterality: str | None = "L",
    view: str | None = "CC",
    *,
    study_uid: str | None = None,
    sop_uid: str | None = None,
    sop_class: str = MG,
    modality: str = "MG",
    view_code: tuple[str, str, str] | None = None,
    with_view_code: bool = True,
    view_position: str | None = None,
    accession: str = "A1",
    **attributes: Any,
) -> Dataset:
    """A mammography header; ``view`` names the standard view coded in View Code Sequence."""
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid or generate_uid()
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = modality
    ds.PatientID = "P1"
    ds.AccessionNumber = accession
    ds.StudyDate = "20250106"
    ds.StudyTime = "090000"
    ds.Manufacturer = "ACME"
    ds.ImageType = ["ORIGINAL", "PRIMARY", ""]
    if laterality is not None:
        ds.ImageLaterality = laterality
    if with_view_code and (view_code or view):
        value, scheme, meaning = view_code or (VIEW_SCT[view][0], "SCT", VIEW_SCT[view][1])
        ds.ViewCodeSequence = Sequence([code_item(value, scheme, meaning)])
    if view_position is not None:
        ds.ViewPosition = view_position
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def raw_digest(path: Path) -> str:
    """sha256 of the dataset bytes after the file meta group (as the spool defines it)."""
    data = path.read_bytes()
    assert data[128:132] == b"DICM"
    (group_length,) = struct.unpack("<I", data[140:144])
    return hashlib.sha256(data[144 + group_length:]).hexdigest()


def write_instance(
    ds: Dataset,
    directory: Path,
    *,
    pixels: np.ndarray | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
    name: str | None = None,
) -> StoredObject:
    """Write ``ds`` with pixels as a DICOM file and describe it as the spool would."""
    out = Dataset()
    out.update(ds)
    array = pixels if pixels is not None else np.arange(64, dtype=np.uint16).reshape(8, 8)
    out.Rows, out.Columns = array.shape
    out.SamplesPerPixel = 1
    out.PhotometricInterpretation = "MONOCHROME2"
    out.BitsAllocated = 16
    out.BitsStored = 12
    out.HighBit = 11
    out.PixelRepresentation = 0
    out.file_meta = FileMetaDataset()
    out.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    out.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    out.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out.PixelData = array.astype(np.uint16).tobytes()
    if transfer_syntax != ExplicitVRLittleEndian:
        out.compress(transfer_syntax, array.astype(np.uint16), generate_instance_uid=False)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / (name or f"{ds.SOPInstanceUID}-{generate_uid()[-8:]}.dcm")
    out.save_as(path, enforce_file_format=True)
    return StoredObject(path=path, raw_digest=raw_digest(path), size_bytes=path.stat().st_size,
                        transfer_syntax_uid=transfer_syntax)


STANDARD = (("L", "CC"), ("R", "CC"), ("L", "MLO"), ("R", "MLO"))


@dataclass
class Site:
    """Sends headers into the assembly the way the listener does, on a fake clock."""

    db: Database
    settings: Settings
    spool: Path

    def send(self, ds: Dataset, at: datetime, *, association_id: int | None = None,
             pixels: np.ndarray | None = None, stored: StoredObject | None = None,
             transfer_syntax: str | None = None) -> IngestOutcome:
        if stored is None:
            kwargs = {"transfer_syntax": transfer_syntax} if transfer_syntax else {}
            stored = write_instance(ds, self.spool, pixels=pixels, **kwargs)
        header = dcmread(stored.path, stop_before_pixels=True)  # as the listener reads it
        classification = classify_instance(header, self.settings, now=at)
        with self.db.session() as session:
            return record_instance(session, self.settings, header, stored, classification,
                                   association_id=association_id, calling_ae="MODALITY",
                                   now=at)

    def send_exam(self, at: datetime, views=STANDARD, **header) -> tuple[str, list[IngestOutcome]]:
        study_uid = header.pop("study_uid", None) or generate_uid()
        outcomes = [self.send(mg_header(lat, view, study_uid=study_uid, **header),
                              at + timedelta(milliseconds=10 * i))
                    for i, (lat, view) in enumerate(views)]
        return study_uid, outcomes

    def study(self, study_id: int) -> Study:
        with self.db.session() as session:
            study = session.get(Study, study_id)
            assert study is not None
            return study

    def instances(self, study_id: int) -> list[Instance]:
        with self.db.session() as session:
            return list(session.scalars(select(Instance).where(Instance.study_id == study_id)
                                        .order_by(Instance.id)))

    def events(self, kind: str) -> list[AuditEvent]:
        with self.db.session() as session:
            return list(session.scalars(select(AuditEvent).where(AuditEvent.kind == kind)
                                        .order_by(AuditEvent.id)))

    def move(self, study_id: int, *statuses: ExamStatus, at: datetime) -> None:
        with self.db.session() as session:
            study = session.get(Study, study_id)
            assert study is not None
            for status in statuses:
                set_status(session, study, status, "test", now=at)

    def readiness(self, at: datetime) -> list[int]:
        return evaluate_readiness(self.db, self.settings, at)
