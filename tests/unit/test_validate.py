"""`triage validate reference | published` on the fixtures and on altered copies of them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from triage.cli.validate_cmd import app
from triage.config import load_settings
from triage.models import import_weights, weights_status
from triage.vocabulary import WeightsStatus

GMIC_FILES = ("gmic_summary.json", "gmic_outputs.npz", "gmic_resnet18_weights_fp16.pt",
              "gmic_input_fp16.npy", "keys_gmic.json")


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "data"
    monkeypatch.setenv("TRIAGE_DATA_DIR", str(path))
    monkeypatch.setenv("TRIAGE_DEVICE", "cpu")
    return path


def _reference(fixtures: Path) -> tuple[int, list[dict]]:
    result = CliRunner().invoke(app, ["reference", "--fixtures", str(fixtures), "--json"])
    rows = json.loads(result.stdout) if result.stdout.strip().startswith("[") else []
    return result.exit_code, rows


def _failed(rows: list[dict]) -> set[str]:
    return {row["check"] for row in rows if not row["pass"]}


def _copy(fixtures: Path, target: Path, names: tuple[str, ...]) -> Path:
    target.mkdir()
    for name in names:
        shutil.copy(fixtures / name, target / name)
    return target


def test_reference_validation_passes_on_the_fixtures(fixtures_dir: Path, data_dir: Path) -> None:
    code, rows = _reference(fixtures_dir)
    assert code == 0, _failed(rows)
    assert rows and all(set(row) >= {"check", "max_abs_error", "tolerance", "pass"}
                        for row in rows)
    prefixes = {row["check"].split("/")[0] for row in rows}
    assert {"preprocessing", "roi2d", "gmic"} <= prefixes
    images = json.loads((fixtures_dir / "preprocessing.json").read_text())["images"]
    checked = {row["check"].split("/")[2] for row in rows
               if row["check"].startswith("preprocessing/")}
    assert {Path(name).stem for name in images} <= checked


def test_altered_roi_location_fails_exactly_that_check(fixtures_dir: Path, data_dir: Path,
                                                       tmp_path: Path) -> None:
    copy = tmp_path / "fixtures"
    copy.mkdir()
    with np.load(fixtures_dir / "retrieve_roi_2d.npz") as data:
        arrays = {k: data[k].copy() for k in data.files}
    arrays["patch_locations_K6"][5, 2, 1] += 64
    np.savez(copy / "retrieve_roi_2d.npz", **arrays)
    code, rows = _reference(copy)
    assert code != 0
    assert _failed(rows) == {"roi2d/K6/patch_locations"}
    assert all(row["check"].startswith("roi2d/") for row in rows)  # the others are skipped


def test_altered_gmic_output_fails_exactly_that_check(fixtures_dir: Path, data_dir: Path,
                                                      tmp_path: Path) -> None:
    copy = _copy(fixtures_dir, tmp_path / "fixtures", GMIC_FILES[:-1])
    with np.load(fixtures_dir / "gmic_outputs.npz") as data:
        arrays = {k: data[k].copy() for k in data.files}
    arrays["y_fusion"][0, 1] += 1e-3
    np.savez(copy / "gmic_outputs.npz", **arrays)
    code, rows = _reference(copy)
    assert code != 0
    assert _failed(rows) == {"gmic/y_fusion"}
    assert "gmic/patch_locations" in {row["check"] for row in rows}


def test_gmic_hyperparameters_come_from_the_summary(fixtures_dir: Path, data_dir: Path,
                                                    tmp_path: Path) -> None:
    copy = _copy(fixtures_dir, tmp_path / "fixtures", GMIC_FILES)
    summary = json.loads((fixtures_dir / "gmic_summary.json").read_text())
    summary["hyperparameters"]["K"] = summary["hyperparameters"]["K"] - 1
    (copy / "gmic_summary.json").write_text(json.dumps(summary))
    code, rows = _reference(copy)
    assert code != 0
    assert {"gmic/patch_locations", "gmic/patch_attns", "gmic/h_crops"} <= _failed(rows)
    assert "gmic/saliency_map" not in _failed(rows)


def test_altered_preprocessing_record_fails_that_image_only(fixtures_dir: Path, data_dir: Path,
                                                            tmp_path: Path) -> None:
    record = json.loads((fixtures_dir / "preprocessing.json").read_text())
    name = next(iter(record["images"]))
    record["images"] = {name: record["images"][name]}
    pipeline = next(k for k, v in record["images"][name].items()
                    if isinstance(v, dict) and "input_size" in v)
    record["images"][name][pipeline]["best_center"][0] += 1
    copy = tmp_path / "fixtures"
    (copy / "images").mkdir(parents=True)
    shutil.copy(fixtures_dir / "images" / name, copy / "images" / name)
    (copy / "preprocessing.json").write_text(json.dumps(record))
    code, rows = _reference(copy)
    assert code != 0
    assert _failed(rows) == {f"preprocessing/{pipeline}/{Path(name).stem}/geometry"}


def test_directory_without_known_files_fails(data_dir: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["reference", "--fixtures", str(tmp_path)])
    assert result.exit_code != 0
    assert "no checks apply" in result.output


def test_published_validation_reports_mismatch_for_fixture_weights(
        fixtures_dir: Path, data_dir: Path) -> None:
    settings = load_settings()
    import_weights(fixtures_dir / "gmic_resnet18_weights_fp16.pt", "gmic-resnet18-1", settings)
    result = CliRunner().invoke(app, ["published", "--images", str(fixtures_dir / "images"),
                                      "--json"])
    assert result.exit_code != 0
    report = json.loads(result.stdout)
    assert report["pass"] is False and report["upgraded"] == []
    published = json.loads((fixtures_dir / "published_weights.json").read_text())
    readme = published["published_sample_predictions"]["gmic_per_image_readme"]
    assert {c["view"] for c in report["comparisons"]} == set(readme)
    for comparison in report["comparisons"]:
        assert comparison["expected"] == readme[comparison["view"]]
    assert any(not c["passed"] for c in report["comparisons"])
    assert weights_status("gmic-resnet18-1", settings) is WeightsStatus.IMPORTED_UNVERIFIED


def test_published_validation_without_imported_weights_says_what_to_do(
        fixtures_dir: Path, data_dir: Path) -> None:
    result = CliRunner().invoke(app, ["published", "--images", str(fixtures_dir / "images")])
    assert result.exit_code != 0
    assert "triage models import" in result.output


def test_published_tolerance_cannot_be_loosened_from_the_command_line(
        fixtures_dir: Path, data_dir: Path) -> None:
    result = CliRunner().invoke(app, ["published", "--images", str(fixtures_dir / "images"),
                                      "--tolerance", "1"])
    assert result.exit_code != 0
    assert "No such option" in result.output


@pytest.mark.parametrize("name", ["dmv-cnn-image-and-heatmaps", "dmv-patch-densenet121",
                                  "gmic3d-resnet18-3"])
def test_published_validation_refuses_dmv_cnn_and_3d_gmic_with_the_reason(
        name: str, fixtures_dir: Path, data_dir: Path) -> None:
    result = CliRunner().invoke(app, ["published", "--images", str(fixtures_dir / "images"),
                                      "--model", name])
    assert result.exit_code == 1
    assert f"{name} cannot be verified by this installation" in result.output
    assert "What you can do" in result.output
