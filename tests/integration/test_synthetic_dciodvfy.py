"""Every synthetic object passes dciodvfy (dicom3tools) without errors; warnings allowed."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from tests.dicom_builders import mammogram, real_exam0
from triage.synthetic import (
    ExamSpec,
    MammoView,
    Photometric,
    TransferSyntax,
    Vendor,
    ViewModifier,
    build_ct_image,
    exam_from_pngs,
    generate_exam,
    study_identity_for_seed,
    write_exam,
)
from triage.vocabulary import Laterality

DCIODVFY = shutil.which("dciodvfy")
pytestmark = pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy (dicom3tools) not installed")
WHEN = datetime(2024, 6, 1, 8, 15).astimezone()


def dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """(error lines, warning lines) that dciodvfy prints for one file."""
    assert DCIODVFY is not None
    done = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True,
                          errors="replace", timeout=60, check=False)
    lines = (done.stdout + done.stderr).splitlines()
    return ([line for line in lines if line.startswith("Error")],
            [line for line in lines if line.startswith("Warning")])


def assert_no_errors(paths: list[Path]) -> None:
    failures = {str(p): errors for p in paths if (errors := dciodvfy(p)[0])}
    assert not failures, "dciodvfy errors:\n" + "\n".join(
        f"{path}:\n  " + "\n  ".join(errors) for path, errors in failures.items())


@pytest.mark.parametrize("syntax", list(TransferSyntax))
@pytest.mark.parametrize("vendor", list(Vendor))
def test_screening_exam_passes_dciodvfy(tmp_path: Path, vendor: Vendor,
                                        syntax: TransferSyntax) -> None:
    summary = generate_exam(ExamSpec(seed=21, vendor=vendor, lesion=True, scale=0.06,
                                     study_datetime=WHEN), tmp_path, syntax)
    assert len(summary.files) == 4
    assert_no_errors(summary.files)


STUDY = study_identity_for_seed(22, WHEN)
VARIANTS: dict[str, dict[str, object]] = {
    **{f"view-{v}": {"view": v} for v in MammoView if not v.is_standard},
    "spot-magnification": {"modifiers": (ViewModifier.SPOT_COMPRESSION,
                                         ViewModifier.MAGNIFICATION)},
    "implant-displaced": {"modifiers": (ViewModifier.IMPLANT_DISPLACED,)},
    "implant-present": {"implant_present": True},
    "partial-view": {"partial_view": True},
    "quality-control": {"quality_control": True},
    "generated-2d": {"generated_2d": True},
    "for-processing": {"for_processing": True},
    "monochrome1": {"photometric": Photometric.MONOCHROME1},
    "latin1-name": {"study": replace(STUDY, patient_name="Müller^Jürgen")},
    "japanese-name": {"study": replace(STUDY, patient_name="Yamada^Tarou=山田^太郎=やまだ^たろう",
                                       character_set=("", "ISO 2022 IR 87"))},
    "japanese-katakana-name": {"study": replace(
        STUDY, patient_name="ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=やまだ^たろう",
        character_set=("ISO 2022 IR 13", "ISO 2022 IR 87"))},
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_ingest_variant_passes_dciodvfy(tmp_path: Path, name: str) -> None:
    fields = dict(VARIANTS[name])
    study = fields.pop("study", STUDY)
    paths = [
        path
        for syntax in TransferSyntax
        for path in write_exam([mammogram(Laterality.RIGHT, study=study, **fields)],
                               tmp_path / str(syntax), syntax)
    ]
    assert_no_errors(paths)


def test_ct_image_in_the_study_passes_dciodvfy(tmp_path: Path) -> None:
    assert_no_errors(write_exam([build_ct_image(STUDY)], tmp_path))


def test_missing_view_code_sequence_is_the_only_finding(tmp_path: Path) -> None:
    """Leaving out View Code Sequence imitates non-conformant senders: Type 1 in MG."""
    path = write_exam([mammogram(include_view_code=False)], tmp_path)[0]
    errors, _ = dciodvfy(path)
    assert errors, "dciodvfy should flag the missing View Code Sequence"
    assert all("ViewCodeSequence" in line for line in errors), errors


@pytest.mark.parametrize("syntax", list(TransferSyntax))
def test_wrapped_real_exam_passes_dciodvfy(tmp_path: Path, fixtures_dir: Path,
                                           syntax: TransferSyntax) -> None:
    paths = real_exam0(tmp_path, transfer_syntax=syntax, fixtures_dir=fixtures_dir)
    assert_no_errors(paths)


def test_wrapped_full_range_16_bit_png_passes_dciodvfy(tmp_path: Path,
                                                       fixtures_dir: Path) -> None:
    datasets: list[Dataset] = exam_from_pngs(
        {(Laterality.LEFT, MammoView.CC): fixtures_dir / "images" / "1_L_CC.png"},
        ExamSpec(seed=23, vendor=Vendor.SIEMENS, study_datetime=WHEN))
    assert_no_errors(write_exam(datasets, tmp_path, TransferSyntax.JPEG2000))
