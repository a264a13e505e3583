"""`triage validate reference` runs the roi3d/ and gmic3d/ checks from the fixture files."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from triage.cli.validate_cmd import app

GMIC3D_FILES = ("gmic3d_summary.json", "gmic3d_io.npz", "gmic3d_weights_fp16.pt",
                "keys_gmic3d.json")


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "data"
    monkeypatch.setenv("TRIAGE_DATA_DIR", str(path))
    monkeypatch.setenv("TRIAGE_DEVICE", "cpu")
    return path


def _reference(fixtures: Path, *only: str) -> tuple[int, list[dict], str]:
    args = ["reference", "--fixtures", str(fixtures), "--json"]
    for prefix in only:
        args += ["--only", prefix]
    result = CliRunner().invoke(app, args)
    rows = json.loads(result.stdout) if result.stdout.strip().startswith("[") else []
    return result.exit_code, rows, result.stdout


def test_reference_validation_passes_roi3d_and_gmic3d_on_the_fixtures(
        fixtures_dir: Path, data_dir: Path) -> None:
    code, rows, _ = _reference(fixtures_dir, "roi3d", "gmic3d")
    assert code == 0, [row for row in rows if not row["pass"]]
    checks = {row["check"] for row in rows}
    with np.load(fixtures_dir / "retrieve_roi_3d.npz") as data:
        runs = {match.groups() for key in data.files
                if (match := re.match(r"^case\d+_K(\d+)_zeta(\d+)_slices$", key))}
    assert len(runs) == 12
    for k, zeta in runs:
        for label in ("slices", "cam_positions", "patch_locations", "cam_positions_all_slices"):
            assert f"roi3d/K{k}/zeta{zeta}/{label}" in checks
    for name in ("saliency_map", "y_global", "y_local", "final_prediction", "patch_attns",
                 "max_slice_numbers", "patch_locations", "patches", "load_strict"):
        assert f"gmic3d/{name}" in checks


def test_altered_roi3d_slice_fails_exactly_that_check(fixtures_dir: Path, data_dir: Path,
                                                      tmp_path: Path) -> None:
    copy = tmp_path / "fixtures"
    copy.mkdir()
    with np.load(fixtures_dir / "retrieve_roi_3d.npz") as data:
        arrays = {k: data[k].copy() for k in data.files}
    arrays["case03_K12_zeta5_slices"][4] += 1
    np.savez(copy / "retrieve_roi_3d.npz", **arrays)
    code, rows, _ = _reference(copy)
    assert code != 0
    failed = {row["check"] for row in rows if not row["pass"]}
    assert failed == {"roi3d/K12/zeta5/slices"}
    assert all(row["check"].startswith("roi3d/") for row in rows)  # the others are skipped
    detail = next(row["detail"] for row in rows if row["check"] in failed)
    assert detail.startswith("cases 3(")


def test_altered_gmic3d_output_fails_exactly_that_check(fixtures_dir: Path, data_dir: Path,
                                                        tmp_path: Path) -> None:
    copy = tmp_path / "fixtures"
    copy.mkdir()
    for name in GMIC3D_FILES:
        shutil.copy(fixtures_dir / name, copy / name)
    with np.load(fixtures_dir / "gmic3d_io.npz") as data:
        arrays = {k: data[k].copy() for k in data.files}
    arrays["max_slice_numbers"][3, 0] = (arrays["max_slice_numbers"][3, 0] + 1) % 3
    np.savez(copy / "gmic3d_io.npz", **arrays)
    code, rows, _ = _reference(copy, "gmic3d")
    assert code != 0
    assert {row["check"] for row in rows if not row["pass"]} == {"gmic3d/max_slice_numbers"}


def test_directory_without_3d_files_skips_roi3d_and_gmic3d(fixtures_dir: Path, data_dir: Path,
                                                           tmp_path: Path) -> None:
    copy = tmp_path / "fixtures"
    copy.mkdir()
    shutil.copy(fixtures_dir / "retrieve_roi_2d.npz", copy / "retrieve_roi_2d.npz")
    code, rows, _ = _reference(copy)
    assert code == 0
    assert rows and not any(row["check"].split("/")[0] in ("roi3d", "gmic3d") for row in rows)
