"""`triage validate reference` runs the DMV-CNN (dmv-cnn/) and patch-classifier (patch/)
checks on the fixtures, skips them when their files are absent, and fails the check whose
expected value was altered."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from triage.cli.validate_cmd import app
from triage.validation import ReferenceReport, run_reference_checks

PATCH_FILES = ("patch_classifier_summary.json", "patch_classifier_io.npz",
               "patch_densenet121_weights_fp16.pt", "keys_patch_densenet121.json")
DMV_FILES = ("dmv_cnn_summary.json", "dmv_cnn_outputs.npz", "dmv_cnn_view_split_weights_fp16.pt",
             "dmv_cnn_image_wise_heads_fp16.pt", "keys_dmv_cnn_view_split.json",
             "keys_dmv_cnn_image_wise.json")
VIEWS = ("L-CC", "R-CC", "L-MLO", "R-MLO")


@pytest.fixture(scope="module")
def report(fixtures_dir: Path) -> ReferenceReport:
    return run_reference_checks(fixtures_dir, only=["dmv-cnn", "patch"])


def _names(report: ReferenceReport) -> set[str]:
    return {r.check for r in report.results}


def _failed(report: ReferenceReport) -> set[str]:
    return {r.check for r in report.results if not r.passed}


def _copy(fixtures: Path, target: Path, names: tuple[str, ...]) -> Path:
    target.mkdir(exist_ok=True)
    for name in names:
        shutil.copy(fixtures / name, target / name)
    return target


def test_dmv_cnn_and_patch_checks_pass_on_the_fixtures(report):
    assert report.passed, _failed(report)
    assert not report.skipped


def test_dmv_cnn_checks_cover_every_output_the_fixture_holds(report, fixtures_dir):
    with np.load(fixtures_dir / "dmv_cnn_outputs.npz") as data:
        keys = set(data.files)
    expected = {"dmv-cnn/state_dict_keys", "dmv-cnn/load_strict", "dmv-cnn/n_params",
                "dmv-cnn/image_wise/state_dict_keys", "dmv-cnn/image_wise/n_params",
                "dmv-cnn/single_image/n_params"}
    expected |= {f"dmv-cnn/{k}" for k in keys if k.endswith("_logprob") and "_wise_" not in k
                 and not k.startswith("full_")}
    expected |= {f"dmv-cnn/{k}" for k in keys if k.startswith("avgpool_")}
    for view in VIEWS:
        if f"image_wise_logprob_{view}" in keys:
            expected |= {f"dmv-cnn/image_wise/logprob_{view}",
                         f"dmv-cnn/single_image/logprob_{view}"}
    for angle in ("CC", "MLO"):
        if f"full_{angle}_logprob" in keys:
            expected.add(f"dmv-cnn/full/full_{angle}_logprob")
    expected |= {f"dmv-cnn/full/input_sha256_{view}" for view in VIEWS}
    assert expected <= _names(report)


def test_patch_checks_cover_the_classifier_and_the_grid(report):
    assert {"patch/state_dict_keys", "patch/load_strict", "patch/n_params", "patch/logits",
            "patch/softmax", "patch/grid/cropped_shape", "patch/grid/width_stride_list",
            "patch/grid/length_stride_list", "patch/grid/n_patches_total",
            "patch/grid/patches"} <= _names(report)


def test_without_their_files_the_checks_are_skipped(fixtures_dir, tmp_path):
    copy = _copy(fixtures_dir, tmp_path / "fixtures", ("retrieve_roi_2d.npz",))
    report = run_reference_checks(copy, only=["dmv-cnn", "patch", "roi2d"])
    assert {"dmv-cnn", "patch"} <= set(report.skipped)
    assert all(r.check.startswith("roi2d/") for r in report.results)


def test_altered_stride_list_fails_exactly_that_check(fixtures_dir, tmp_path):
    copy = _copy(fixtures_dir, tmp_path / "fixtures", PATCH_FILES)
    (copy / "images").mkdir()
    summary = json.loads((fixtures_dir / "patch_classifier_summary.json").read_text())
    shutil.copy(fixtures_dir / "images" / summary["image"], copy / "images" / summary["image"])
    strides = summary["length_stride_list"]
    strides[0], strides[-1] = strides[-1], strides[0] + 1
    (copy / "patch_classifier_summary.json").write_text(json.dumps(summary))
    report = run_reference_checks(copy, only=["patch"])
    assert _failed(report) == {"patch/grid/length_stride_list"}


def test_altered_softmax_fails_and_no_images_means_no_grid_checks(fixtures_dir, tmp_path):
    copy = _copy(fixtures_dir, tmp_path / "fixtures", PATCH_FILES)
    with np.load(fixtures_dir / "patch_classifier_io.npz") as data:
        arrays = {k: data[k].copy() for k in data.files}
    arrays["softmax"][3, 1] += 2e-4
    np.savez(copy / "patch_classifier_io.npz", **arrays)
    report = run_reference_checks(copy, only=["patch"])
    assert _failed(report) == {"patch/softmax"}
    assert not any(r.check.startswith("patch/grid/") for r in report.results)


def test_altered_dmv_cnn_output_fails_exactly_that_check(fixtures_dir, tmp_path):
    copy = _copy(fixtures_dir, tmp_path / "fixtures", DMV_FILES)
    with np.load(fixtures_dir / "dmv_cnn_outputs.npz") as data:
        arrays = {k: data[k].copy() for k in data.files if not k.startswith("full_")}
    arrays["MLO_logprob"][0, 2, 1] -= 5e-3
    np.savez(copy / "dmv_cnn_outputs.npz", **arrays)
    report = run_reference_checks(copy, only=["dmv-cnn"])
    assert _failed(report) == {"dmv-cnn/MLO_logprob"}
    assert not any(r.check.startswith("dmv-cnn/full/") for r in report.results)


def test_cli_reports_the_patch_checks_passing(fixtures_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TRIAGE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("TRIAGE_DEVICE", "cpu")
    result = CliRunner().invoke(app, ["reference", "--fixtures", str(fixtures_dir),
                                      "--only", "patch", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert rows and all(row["pass"] for row in rows)
    assert {row["check"].split("/")[0] for row in rows} == {"patch"}
