"""Results back to the archive: outputs -> files -> outbox rows -> sender -> `delivered`.

``Publisher`` builds the SR(s) and overlays of a result and writes them durably under
``outputs_dir`` before the pipeline commits; the outbox rows (one per object and
destination) are written in the same transaction as the run and the `scored` status, so
there is never a scored exam without its outbox. It is idempotent: the UIDs are
deterministic, files are rewritten atomically and rows are keyed by
(SOP Instance UID, destination). With no destination configured the outputs directory is
the archive (the embedded default's "local folder"), and the exam is delivered at once.

``OutboxSender`` (one per deployment at a time, a DB lease) sends pending rows with one
presentation context per transfer syntax, retries transient failures with exponential
backoff, records permanent refusals with their reason, and marks the exam `delivered`
once every object reached every destination.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import defaultdict
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session

from triage.config import Destination, Settings
from triage.db import Database, Instance, OutboxItem, ScoringRun, Study
from triage.db.leases import acquire_lease
from triage.db.models import AuditEvent, utcnow
from triage.db.states import set_status
from triage.dicom.sender import SendOutcome, send_files
from triage.errors import StorageError
from triage.imaging import decode_pixels
from triage.outputs import (
    COMPREHENSIVE_3D_SR,
    MAMMOGRAPHY_CAD_SR,
    DocumentReference,
    build_mammo_cad_sr,
    build_overlays,
    build_tid1500_sr,
    cad_sr_allowed,
)
from triage.results import ExamResult
from triage.vocabulary import ExamStatus, OutboxStatus, OutputKind

log = logging.getLogger(__name__)

SENDER_LEASE = "sender"
LOCAL_DESTINATION = "local-folder"
MAX_BACKOFF_SECONDS = 300.0


def _write_atomic(ds: Dataset, path: Path) -> None:
    """temp file, fsync, rename, directory fsync: a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    try:
        ds.save_as(tmp, enforce_file_format=True)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise StorageError(f"cannot write output {path}: {exc.strerror}; check free space "
                           f"and permissions of TRIAGE_DATA_DIR") from exc


def _predecessors(session: Session, study_id: int,
                  result: ExamResult) -> dict[OutputKind, DocumentReference]:
    """The SRs of the newest earlier run of this exam with another image set, per kind."""
    runs = session.scalars(select(ScoringRun).where(
        ScoringRun.study_id == study_id, ScoringRun.status == "succeeded",
        ScoringRun.instances_digest != result.instances_digest,
    ).order_by(ScoringRun.finished_at.desc(), ScoringRun.id.desc())).all()
    for run in runs:
        outputs = (run.details or {}).get("outputs", {})
        if outputs:
            classes = {OutputKind.SR_TID1500: COMPREHENSIVE_3D_SR,
                       OutputKind.SR_MAMMO_CAD: MAMMOGRAPHY_CAD_SR}
            return {kind: DocumentReference(ref["study"], ref["series"], ref["instance"], sop_class)
                    for kind, sop_class in classes.items()
                    if (ref := outputs.get(kind.value))}
    return {}


def _read_and_decode(path: Path, shown: Mapping[str, set[int]]) -> tuple[Dataset, np.ndarray]:
    """The source data set and its pixels. A multi-frame (DBT) source is read header-only
    and only the frames the result shows (``ViewScore.saliency_slice``) are decoded, from
    the file, into a stack of all frames whose other frames stay zero: ``np.zeros`` pages
    that are never written are never backed by memory, so a 60-slice volume costs a frame."""
    header = pydicom.dcmread(path, stop_before_pixels=True)
    frames = int(header.get("NumberOfFrames", 1) or 1)
    if frames <= 1:
        ds = pydicom.dcmread(path)
        return ds, decode_pixels(ds).array
    stack = np.zeros((frames, int(header.Rows), int(header.Columns)), dtype=np.float32)
    with open(path, "rb") as pixels:
        for frame in shown.get(str(header.SOPInstanceUID), set()) or {0}:
            stack[frame] = decode_pixels(header, frame=frame, pixels_from=pixels).array
    return header, stack


def _sources(paths: Sequence[Path], shown: Mapping[str, set[int]] | None = None,
             ) -> tuple[list[Dataset], dict[str, np.ndarray]]:
    """The scored source instances and their pixels, decoded concurrently."""
    with ThreadPoolExecutor(max_workers=min(4, max(1, len(paths)))) as pool:
        decoded = list(pool.map(lambda p: _read_and_decode(p, shown or {}), paths))
    return [ds for ds, _ in decoded], {str(ds.SOPInstanceUID): px for ds, px in decoded}


def build_outputs(settings: Settings, result: ExamResult, source_paths: Sequence[Path],
                  predecessors: dict[OutputKind, DocumentReference],
                  ) -> list[tuple[OutputKind, Dataset]]:
    """Every object that leaves us for this result, in sending order (SRs first)."""
    shown: dict[str, set[int]] = {}
    for view in result.views:
        if view.saliency_slice is not None:
            shown.setdefault(view.sop_instance_uid, set()).add(view.saliency_slice)
    sources, pixels = _sources(source_paths, shown)
    objects: list[tuple[OutputKind, Dataset]] = [
        (OutputKind.SR_TID1500, build_tid1500_sr(
            result, sources, settings, predecessor=predecessors.get(OutputKind.SR_TID1500))),
    ]
    if cad_sr_allowed(result, settings):
        objects.append((OutputKind.SR_MAMMO_CAD, build_mammo_cad_sr(
            result, sources, settings, predecessor=predecessors.get(OutputKind.SR_MAMMO_CAD))))
    objects += [(OutputKind.SC_OVERLAY, sc) for sc in build_overlays(result, sources, pixels, settings)]
    return objects


def _destinations(settings: Settings, kind: OutputKind) -> list[str]:
    group = "overlay" if kind is OutputKind.SC_OVERLAY else "sr"
    return [str(d) for d in settings.destinations(group)] or [LOCAL_DESTINATION]


@dataclass(frozen=True)
class WrittenObject:
    kind: OutputKind
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    transfer_syntax_uid: str


class Publisher:
    """The output stage the pipeline calls: build + write before the commit, record the
    outbox rows inside the same transaction as the run and the `scored` status, then mark
    local-folder deliveries after the commit. Every step is idempotent."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def prepare(self, db: Database, study_id: int, result: ExamResult) -> list[WrittenObject]:
        with db.session() as session:
            study = session.get(Study, study_id)
            assert study is not None
            paths = [Path(p) for p in session.scalars(select(Instance.path).where(
                Instance.study_id == study_id,
                Instance.sop_instance_uid.in_(result.scored_sop_instance_uids),
                Instance.chosen.is_(True)))]
            predecessors = _predecessors(session, study_id, result)
            study_uid = study.study_instance_uid
        out_dir = self.settings.outputs_dir / study_uid
        written = []
        for kind, ds in build_outputs(self.settings, result, paths, predecessors):
            path = out_dir / f"{kind.value}-{ds.SOPInstanceUID}.dcm"
            _write_atomic(ds, path)
            written.append(WrittenObject(
                kind=kind, path=path, sop_class_uid=str(ds.SOPClassUID),
                sop_instance_uid=str(ds.SOPInstanceUID),
                series_instance_uid=str(ds.SeriesInstanceUID),
                study_instance_uid=str(ds.StudyInstanceUID),
                transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID)))
        return written

    def record(self, session: Session, study_id: int, run: ScoringRun,
               written: Sequence[WrittenObject]) -> int:
        """Outbox rows (one per object and destination) and the run's output references."""
        rows = 0
        outputs_detail = {}
        for obj in written:
            if obj.kind is not OutputKind.SC_OVERLAY:
                outputs_detail[obj.kind.value] = {"study": obj.study_instance_uid,
                                                  "series": obj.series_instance_uid,
                                                  "instance": obj.sop_instance_uid}
            for dest in _destinations(self.settings, obj.kind):
                exists = session.scalars(select(OutboxItem.id).where(
                    OutboxItem.sop_instance_uid == obj.sop_instance_uid,
                    OutboxItem.destination == dest)).first()
                if exists is not None:
                    continue
                local = dest == LOCAL_DESTINATION
                session.add(OutboxItem(
                    study_id=study_id, run_id=run.id, kind=obj.kind.value,
                    sop_class_uid=obj.sop_class_uid, sop_instance_uid=obj.sop_instance_uid,
                    transfer_syntax_uid=obj.transfer_syntax_uid, path=str(obj.path),
                    destination=dest,
                    status=(OutboxStatus.SENT if local else OutboxStatus.PENDING).value,
                    sent_at=utcnow() if local else None,
                ))
                rows += 1
        run.details = {**(run.details or {}), "outputs": outputs_detail,
                       "cad_sr_sent": OutputKind.SR_MAMMO_CAD.value in outputs_detail}
        return rows

    def after_commit(self, db: Database, study_id: int) -> None:
        mark_delivered(db, [study_id])


def mark_delivered(db: Database, study_ids: Sequence[int]) -> list[int]:
    """scored -> delivered for exams whose latest run's objects all reached every destination."""
    done = []
    with db.session() as session:
        for study_id in set(study_ids):
            study = session.get(Study, study_id)
            if study is None or study.status != ExamStatus.SCORED.value:
                continue
            run = session.scalars(select(ScoringRun).where(
                ScoringRun.study_id == study_id, ScoringRun.status == "succeeded")
                .order_by(ScoringRun.finished_at.desc(), ScoringRun.id.desc())).first()
            if run is None:
                continue
            items = session.scalars(select(OutboxItem).where(OutboxItem.run_id == run.id)).all()
            if items and all(i.status == OutboxStatus.SENT.value for i in items):
                where = sorted({i.destination for i in items})
                set_status(session, study, ExamStatus.DELIVERED, f"results delivered to {', '.join(where)}")
                done.append(study_id)
    return done


def backoff_seconds(attempts: int) -> float:
    return float(min(MAX_BACKOFF_SECONDS, 2 ** max(0, attempts - 1)))


def send_pending(db: Database, settings: Settings, *, now: datetime | None = None,
                 holder: str = "sender") -> int:
    """One pass of the sender: send due rows, record outcomes; returns rows sent."""
    now = now or utcnow()
    with db.session() as session:
        if not acquire_lease(session, SENDER_LEASE, holder, ttl_seconds=120):
            return 0
        due = session.scalars(select(OutboxItem).where(
            OutboxItem.status == OutboxStatus.PENDING.value, OutboxItem.next_attempt_at <= now)
            .order_by(OutboxItem.id).limit(200)).all()
        by_dest: dict[str, list[tuple[int, Path]]] = defaultdict(list)
        for item in due:
            by_dest[item.destination].append((item.id, Path(item.path)))
    sent = 0
    touched: set[int] = set()
    for dest_text, items in by_dest.items():
        results = send_files([p for _, p in items], Destination.parse(dest_text), settings.ae_title)
        with db.session() as session:
            for (item_id, _), res in zip(items, results, strict=True):
                row = session.get(OutboxItem, item_id)
                if row is None:
                    continue
                row.attempts += 1
                row.last_status_code = res.status
                touched.add(row.study_id)
                if res.outcome is SendOutcome.STORED:
                    row.status, row.sent_at, row.last_error = OutboxStatus.SENT.value, utcnow(), None
                    sent += 1
                elif res.outcome is SendOutcome.PERMANENT:
                    row.status, row.last_error = OutboxStatus.FAILED.value, res.message
                    session.add(AuditEvent(kind="delivery_refused", study_id=row.study_id,
                                           sop_instance_uid=row.sop_instance_uid,
                                           detail={"destination": dest_text, "status": res.status_text,
                                                   "reason": res.message}))
                else:
                    row.last_error = res.message
                    row.next_attempt_at = utcnow() + timedelta(seconds=backoff_seconds(row.attempts))
    mark_delivered(db, sorted(touched))
    return sent


class OutboxSender(threading.Thread):
    """Runs ``send_pending`` every ``poll_seconds`` until stopped; never dies on an error."""

    def __init__(self, db: Database, settings: Settings, poll_seconds: float = 1.0) -> None:
        super().__init__(name="outbox-sender", daemon=True)
        self.db, self.settings, self.poll_seconds = db, settings, poll_seconds
        self.stop_event = threading.Event()
        self.holder = f"sender:{os.getpid()}"

    def stop(self) -> None:
        self.stop_event.set()

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                send_pending(self.db, self.settings, holder=self.holder)
            except Exception:
                log.exception("outbox sender pass failed; retrying")
            self.stop_event.wait(self.poll_seconds)
