"""Test helpers that write real-looking mammography exams (built on ``triage.synthetic``).

* ``real_exam0(tmp_path)``: the GMIC sample exam 0 (four real 12-bit PNGs from the shared
  fixtures) wrapped as Hologic-style DICOM files, pixel values unchanged;
* ``synthetic_exam(tmp_path, ...)``: a small synthetic screening exam written to files;
* ``mammogram(...)``: one small synthetic view as a Dataset, every ingest option exposed.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from tests.conftest import fixtures_path
from triage.synthetic import (
    ExamSpec,
    ExamSummary,
    MammoView,
    StudyIdentity,
    TransferSyntax,
    Vendor,
    ViewSpec,
    build_view,
    exam_from_pngs,
    generate_exam,
    study_identity_for_seed,
    write_exam,
)
from triage.vocabulary import Laterality, View

#: GMIC sample exam 0: (laterality, view) -> file name under fixtures/images
EXAM0_FILES: dict[tuple[Laterality, View], str] = {
    (Laterality.LEFT, View.CC): "0_L-CC.png",
    (Laterality.RIGHT, View.CC): "0_R-CC.png",
    (Laterality.LEFT, View.MLO): "0_L-MLO.png",
    (Laterality.RIGHT, View.MLO): "0_R-MLO.png",
}

SMALL_MATRIX = (256, 208)


def exam0_pngs(fixtures_dir: Path | None = None) -> dict[tuple[Laterality, View], Path]:
    images = (fixtures_dir or fixtures_path()) / "images"
    return {key: images / name for key, name in EXAM0_FILES.items()}


def real_exam0_datasets(spec: ExamSpec | None = None,
                        fixtures_dir: Path | None = None) -> list[Dataset]:
    return exam_from_pngs(exam0_pngs(fixtures_dir), spec or ExamSpec(seed=100))


def real_exam0(tmp_path: Path, spec: ExamSpec | None = None,
               transfer_syntax: TransferSyntax | str = TransferSyntax.EXPLICIT,
               fixtures_dir: Path | None = None) -> list[Path]:
    """Write GMIC exam 0 as four DICOM files under ``tmp_path/exam0``."""
    return write_exam(real_exam0_datasets(spec, fixtures_dir), tmp_path / "exam0",
                      transfer_syntax)


def synthetic_exam(tmp_path: Path, seed: int = 0, vendor: Vendor = Vendor.HOLOGIC,
                   lesion: bool = False, matrix: tuple[int, int] = SMALL_MATRIX,
                   transfer_syntax: TransferSyntax | str = TransferSyntax.EXPLICIT,
                   study_datetime: datetime | None = None, **spec_fields: Any) -> ExamSummary:
    """Write a small synthetic screening exam under ``tmp_path/exam-<seed>``."""
    spec = ExamSpec(seed=seed, vendor=vendor, lesion=lesion, matrix=matrix,
                    study_datetime=study_datetime, **spec_fields)
    return generate_exam(spec, tmp_path / f"exam-{seed}", transfer_syntax)


def mammogram(laterality: Laterality = Laterality.LEFT,
              view: View | MammoView = MammoView.CC,
              study: StudyIdentity | None = None, **view_fields: Any) -> Dataset:
    """One small synthetic mammogram; ``view_fields`` are ``ViewSpec`` fields."""
    view_fields.setdefault("matrix", (128, 104))
    spec = ViewSpec(study=study or study_identity_for_seed(0), laterality=laterality,
                    view=MammoView.from_view(view), **view_fields)
    return build_view(spec)

