"""Synthetic Breast Tomosynthesis objects pass dciodvfy (dicom3tools) without errors.

Checked against the standard IOD and against dciodvfy's IHE DBT profile (which adds the
IHE Rad TF requirements, e.g. its Image Type rule for thin and thick slices).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pytest

from triage.synthetic import (
    ExamSpec,
    TransferSyntax,
    Vendor,
    build_dbt_view,
    dbt_view_specs,
    generate_dbt_exam,
    write_exam,
)

DCIODVFY = shutil.which("dciodvfy")
pytestmark = pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy (dicom3tools) not installed")
WHEN = datetime(2024, 6, 1, 8, 15).astimezone()
MATRIX = (96, 80)


def dciodvfy(path: Path, *options: str) -> tuple[list[str], list[str]]:
    """(error lines, warning lines) that dciodvfy prints for one file."""
    assert DCIODVFY is not None
    done = subprocess.run([DCIODVFY, *options, str(path)], capture_output=True, text=True,
                          errors="replace", timeout=60, check=False)
    lines = (done.stdout + done.stderr).splitlines()
    return ([line for line in lines if line.startswith("Error")],
            [line for line in lines if line.startswith("Warning")])


def assert_clean(paths: list[Path], *options: str, warnings_allowed: bool = False) -> None:
    findings = {}
    for path in paths:
        errors, warnings = dciodvfy(path, *options)
        if errors or (warnings and not warnings_allowed):
            findings[str(path)] = errors + ([] if warnings_allowed else warnings)
    assert not findings, "dciodvfy findings:\n" + "\n".join(
        f"{path}:\n  " + "\n  ".join(lines) for path, lines in findings.items())


@pytest.mark.parametrize("syntax", list(TransferSyntax))
@pytest.mark.parametrize("vendor", list(Vendor))
def test_dbt_exam_with_slabs_passes_dciodvfy_and_the_ihe_dbt_profile(
        tmp_path: Path, vendor: Vendor, syntax: TransferSyntax) -> None:
    summary = generate_dbt_exam(
        ExamSpec(seed=41, vendor=vendor, lesion=True, matrix=MATRIX, study_datetime=WHEN),
        tmp_path, syntax, slices=12, slab_thickness_mm=6.0)
    assert len(summary.files) == 8
    assert_clean(summary.files)
    assert_clean(summary.files, "-profile", "IHEDBT")


def test_combo_exam_passes_dciodvfy(tmp_path: Path) -> None:
    summary = generate_dbt_exam(
        ExamSpec(seed=42, lesion=True, matrix=MATRIX, study_datetime=WHEN), tmp_path,
        slices=8, slab_thickness_mm=6.0, combo=True)
    assert len(summary.files) == 16
    assert_clean(summary.files, warnings_allowed=True)  # the 2D objects carry warnings


@pytest.mark.parametrize("variant", ["reversed_storage", "single_slice", "ten_mm_slabs"])
def test_dbt_variants_pass_dciodvfy(tmp_path: Path, variant: str) -> None:
    spec = dbt_view_specs(ExamSpec(seed=43, matrix=MATRIX, study_datetime=WHEN), slices=12)[0]
    spec = {
        "reversed_storage": replace(spec, reversed_storage=True),
        "single_slice": replace(spec, slices=1),
        "ten_mm_slabs": replace(spec, slab_thickness_mm=10.0, series_number=4),
    }[variant]
    assert_clean(write_exam([build_dbt_view(spec)], tmp_path))


def test_vendor_style_image_laterality_is_only_a_warning(tmp_path: Path) -> None:
    spec = dbt_view_specs(ExamSpec(seed=44, matrix=MATRIX, study_datetime=WHEN), slices=8)[1]
    path = write_exam([build_dbt_view(replace(spec, image_laterality=True))], tmp_path)[0]
    errors, warnings = dciodvfy(path)
    assert not errors, errors
    assert any("Image Laterality" in line for line in warnings), warnings
