"""Offline batch scoring of a folder of DICOM files (`triage score-folder`).

Files are classified and grouped into exams exactly as the listener does
(``classify_instance`` + ``record_instance``), scored in place (the DB records their paths;
nothing is copied), and the results go into the database and, optionally, one JSON file
per exam. Since every file is already there, readiness is decided at once: complete exams
are ready, exams with both views of one breast are ready and partial, the rest skipped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError
from sqlalchemy import select

from triage.config import Settings
from triage.db import Database, Study
from triage.db.models import utcnow
from triage.dicom.classify import classify_instance
from triage.dicom.records import StoredObject
from triage.dispatch import enqueue_ready
from triage.exams import evaluate_readiness, record_instance
from triage.pipeline import Ensemble, Outcome, process_study
from triage.results import ExamResult

log = logging.getLogger(__name__)

Progress = Callable[[Iterable[object], str, int], Iterable[object]]


@dataclass
class FolderReport:
    files_seen: int = 0
    files_recorded: int = 0
    unreadable: dict[str, str] = field(default_factory=dict)  # path -> reason
    outcomes: dict[str, str] = field(default_factory=dict)  # study uid -> outcome
    results: dict[str, ExamResult] = field(default_factory=dict)


def _dataset_digest(path: Path) -> tuple[str, int]:
    """sha256 of the bytes after the File Meta Information group, and the file size."""
    data = path.read_bytes()
    offset = 0
    if len(data) >= 144 and data[128:132] == b"DICM" and data[132:136] == b"\x02\x00\x00\x00":
        (group_length,) = struct.unpack("<I", data[140:144])
        offset = 144 + group_length
    return hashlib.sha256(data[offset:]).hexdigest(), len(data)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def _identity(items: Iterable[object], _desc: str, _total: int) -> Iterable[object]:
    return items


def ingest_folder(db: Database, settings: Settings, folder: Path,
                  progress: Progress = _identity) -> FolderReport:
    """Record every readable DICOM file of ``folder``; unreadable ones are reported."""
    report = FolderReport()
    files = _files(folder)
    report.files_seen = len(files)
    for path in progress(files, "reading files", len(files)):
        assert isinstance(path, Path)
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
            classification = classify_instance(header, settings)
            digest, size = _dataset_digest(path)
            stored = StoredObject(path=path.resolve(), raw_digest=digest, size_bytes=size,
                                  transfer_syntax_uid=str(header.file_meta.TransferSyntaxUID))
            with db.session() as session:
                record_instance(session, settings, header, stored, classification,
                                association_id=None, calling_ae=None, now=utcnow())
            report.files_recorded += 1
        except (InvalidDicomError, AttributeError, KeyError, ValueError, OSError) as exc:
            report.unreadable[str(path)] = f"{type(exc).__name__}: {exc}"
            log.warning("file not recorded", extra={"path": str(path), "error": str(exc)})
    # every file is there: apply the readiness rules as if all timers had run out
    later = utcnow() + timedelta(seconds=settings.max_wait_seconds + settings.quiet_seconds + 1)
    evaluate_readiness(db, settings, later)
    return report


def result_json(result: ExamResult) -> dict[str, object]:
    return {
        "study_instance_uid": result.study_instance_uid,
        "exam_score": result.exam_score,
        "category": result.category,
        "not_triaged_reason": result.not_triaged_reason,
        "verified": result.verified,
        "partial": result.partial,
        "model_set_version": result.model_set_version,
        "breasts": [{"laterality": b.laterality.value, "p_benign": b.p_benign,
                     "p_malignant": b.p_malignant, "per_member": b.per_member}
                    for b in result.breasts],
        "views": [{"member": v.member, "sop_instance_uid": v.sop_instance_uid,
                   "laterality": v.laterality.value, "view": v.view.value,
                   "p_benign": v.p_benign, "p_malignant": v.p_malignant,
                   "rois": [{"top": r.top, "left": r.left, "height": r.height,
                             "width": r.width, "attention": r.attention} for r in v.rois]}
                  for v in result.views],
        "members": [{"name": m.name, "version": m.version, "weights_sha256": m.weights_sha256,
                     "weights_status": m.weights_status.value, "included": m.included,
                     "failure_reason": m.failure_reason} for m in result.members],
        "notes": list(result.notes),
        "timings": result.timings,
    }


class _Capture:
    """An output stage that keeps the result for the JSON file (no DICOM outputs offline)."""

    def __init__(self) -> None:
        self.results: dict[int, ExamResult] = {}

    def prepare(self, db: Database, study_id: int, result: ExamResult) -> list[object]:
        self.results[study_id] = result
        return []

    def record(self, session: object, study_id: int, run: object, written: object) -> int:
        return 0

    def after_commit(self, db: Database, study_id: int) -> None:
        return None


def score_folder(db: Database, settings: Settings, folder: Path, ensemble: Ensemble,
                 out_dir: Path | None = None, progress: Progress = _identity) -> FolderReport:
    """Ingest ``folder``, score every ready exam, write ``<study uid>.json`` files to ``out_dir``."""
    report = ingest_folder(db, settings, folder, progress)
    study_ids = enqueue_ready(db, None)
    capture = _Capture()
    for study_id in progress(study_ids, "scoring exams", len(study_ids)):
        assert isinstance(study_id, int)
        outcome = process_study(db, ensemble, study_id, capture)  # type: ignore[arg-type]
        with db.session() as session:
            study = session.get(Study, study_id)
            uid = study.study_instance_uid if study else str(study_id)
        report.outcomes[uid] = outcome.value
        if outcome is Outcome.SCORED and study_id in capture.results:
            report.results[uid] = capture.results[study_id]
            if out_dir is not None:
                out_dir.mkdir(parents=True, exist_ok=True)
                (out_dir / f"{uid}.json").write_text(
                    json.dumps(result_json(capture.results[study_id]), indent=2))
    with db.session() as session:
        for study in session.scalars(select(Study).where(Study.status == "skipped")):
            report.outcomes.setdefault(study.study_instance_uid, f"skipped: {study.skip_reason}")
    return report
