"""`triage synthetic exam`: files, determinism for a seed, options."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless
from typer.testing import CliRunner

from triage.cli import app
from triage.synthetic import Vendor, vendor_profile

runner = CliRunner()
WHEN = "2024-06-01T08:15:00"


def run_exam(out: Path, *extra: str) -> dict:
    result = runner.invoke(app, ["synthetic", "exam", "--out", str(out), "--rows", "160",
                                 "--cols", "128", *extra])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def file_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def test_exam_writes_the_four_screening_views(tmp_path: Path) -> None:
    summary = run_exam(tmp_path / "a", "--seed", "1", "--study-datetime", WHEN)
    files = sorted((tmp_path / "a").glob("*.dcm"))
    assert len(files) == 4
    assert sorted(str(p) for p in files) == sorted(i["file"] for i in summary["instances"])
    views = set()
    for path in files:
        ds = pydicom.dcmread(path)
        assert ds.StudyInstanceUID == summary["study_instance_uid"]
        assert ds.AccessionNumber == summary["accession_number"]
        assert ds.StudyDate == "20240601" and ds.StudyTime == "081500"
        assert (ds.Rows, ds.Columns) == (160, 128)
        views.add((ds.ImageLaterality, ds.ViewPosition))
    assert views == {("L", "CC"), ("R", "CC"), ("L", "MLO"), ("R", "MLO")}


@pytest.mark.parametrize("syntax", ["explicit", "jpeg2000"])
def test_same_seed_twice_writes_identical_bytes(tmp_path: Path, syntax: str) -> None:
    for out in ("a", "b"):
        run_exam(tmp_path / out, "--seed", "5", "--lesion", "--study-datetime", WHEN,
                 "--transfer-syntax", syntax)
    first, second = file_bytes(tmp_path / "a"), file_bytes(tmp_path / "b")
    assert len(first) == 4
    assert first == second


def test_another_seed_writes_other_pixels_and_uids(tmp_path: Path) -> None:
    a = run_exam(tmp_path / "a", "--seed", "5", "--study-datetime", WHEN)
    b = run_exam(tmp_path / "b", "--seed", "6", "--study-datetime", WHEN)
    assert a["study_instance_uid"] != b["study_instance_uid"]
    for name, data in file_bytes(tmp_path / "a").items():
        assert data != (tmp_path / "b" / name).read_bytes()
        pa = pydicom.dcmread(tmp_path / "a" / name).pixel_array
        pb = pydicom.dcmread(tmp_path / "b" / name).pixel_array
        assert not np.array_equal(pa, pb)


def test_default_study_time_is_now_and_uids_still_follow_the_seed(tmp_path: Path) -> None:
    before = datetime.now().replace(microsecond=0)
    a = run_exam(tmp_path / "a", "--seed", "9")
    after = datetime.now()
    b = run_exam(tmp_path / "b", "--seed", "9")
    ds = pydicom.dcmread(a["instances"][0]["file"])
    assert before <= datetime.strptime(ds.StudyDate + ds.StudyTime, "%Y%m%d%H%M%S") <= after
    assert [i["sop_instance_uid"] for i in a["instances"]] == \
        [i["sop_instance_uid"] for i in b["instances"]]
    for ia, ib in zip(a["instances"], b["instances"], strict=True):
        assert pydicom.dcmread(ia["file"]).PixelData == pydicom.dcmread(ib["file"]).PixelData


def test_vendor_transfer_syntax_and_lesion_options(tmp_path: Path) -> None:
    summary = run_exam(tmp_path / "ge", "--vendor", "ge", "--transfer-syntax", "jpeg2000",
                       "--lesion", "--seed", "2", "--study-datetime", WHEN)
    lesions = [i for i in summary["instances"] if i["lesion"]]
    assert len(lesions) == 2 and len({i["laterality"] for i in lesions}) == 1
    for entry in summary["instances"]:
        ds = pydicom.dcmread(entry["file"])
        assert ds.file_meta.TransferSyntaxUID == JPEG2000Lossless
        assert ds.PhotometricInterpretation == vendor_profile(Vendor.GE).photometric
        assert ds.Manufacturer == vendor_profile(Vendor.GE).manufacturer


def test_synthetic2d_modality_marks_images_as_generated(tmp_path: Path) -> None:
    summary = run_exam(tmp_path / "s", "--modality", "synthetic2d", "--study-datetime", WHEN)
    for entry in summary["instances"]:
        assert "GENERATED_2D" in pydicom.dcmread(entry["file"]).ImageType


def test_rows_without_cols_is_refused(tmp_path: Path) -> None:
    result = runner.invoke(app, ["synthetic", "exam", "--out", str(tmp_path), "--rows", "100"])
    assert result.exit_code == 2
    assert "--rows and --cols" in result.output
    assert not list(tmp_path.iterdir())
