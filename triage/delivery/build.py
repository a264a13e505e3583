"""Building a result's outputs and writing them durably (no database, no network).

``build_outputs`` makes every object that leaves us for one result, in sending order: the
TID 1500 SR, the Mammography CAD SR where allowed, one secondary-capture overlay per scored
view, from exactly the source images that were scored (``ExamResult.scored_images``).
``write_outputs`` writes them atomically (temp file, fsync, rename, directory fsync).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from triage.config import Settings
from triage.errors import StorageError
from triage.imaging import decode_pixels
from triage.outputs import (
    DocumentReference,
    build_mammo_cad_sr,
    build_overlays,
    build_tid1500_sr,
    cad_sr_allowed,
)
from triage.results import ExamResult
from triage.vocabulary import OutputKind


@dataclass(frozen=True)
class WrittenObject:
    kind: OutputKind
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    transfer_syntax_uid: str


def write_atomic(ds: Dataset, path: Path) -> None:
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




def write_outputs(settings: Settings, result: ExamResult,
                  predecessors: dict[OutputKind, DocumentReference],
                  out_dir: Path) -> list[WrittenObject]:
    """Build every output of ``result`` from the images it scored and write each durably."""
    paths = [Path(image.path) for image in result.scored_images]
    written = []
    for kind, ds in build_outputs(settings, result, paths, predecessors):
        path = out_dir / f"{kind.value}-{ds.SOPInstanceUID}.dcm"
        write_atomic(ds, path)
        written.append(WrittenObject(
            kind=kind, path=path, sop_class_uid=str(ds.SOPClassUID),
            sop_instance_uid=str(ds.SOPInstanceUID),
            series_instance_uid=str(ds.SeriesInstanceUID),
            study_instance_uid=str(ds.StudyInstanceUID),
            transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID)))
    return written
