"""`triage models list | import | verify` through the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from triage.cli.models_cmd import app
from triage.models.weights import file_digests


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "data"
    monkeypatch.setenv("TRIAGE_DATA_DIR", str(path))
    return path


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def _list(runner: CliRunner) -> dict[str, dict]:
    result = runner.invoke(app, ["list", "--json"])
    assert result.exit_code == 0, result.output
    return {row["name"]: row for row in json.loads(result.stdout)}


def test_list_shows_every_model_with_status_and_licence(runner: CliRunner, data_dir: Path,
                                                        fixtures_dir: Path) -> None:
    rows = _list(runner)
    published = json.loads((fixtures_dir / "published_weights.json").read_text())
    for i in range(1, 6):
        row = rows[f"gmic-resnet18-{i}"]
        assert row["weights_status"] == "random" and row["sha256"] is None
        assert row["published_git_blob_id"] in published["gmic"]["files"].values()
        assert "CC BY-NC-SA 4.0" in row["licence"]
        for key in ("version", "architecture", "weights_file", "intended_use"):
            assert key in row
    plain = runner.invoke(app, ["list"])
    assert plain.exit_code == 0 and "gmic-resnet50" in plain.stdout


def test_import_then_list_and_verify(runner: CliRunner, data_dir: Path,
                                     fixtures_dir: Path) -> None:
    weights = fixtures_dir / "gmic_resnet18_weights_fp16.pt"
    result = runner.invoke(app, ["import", str(weights), "--as", "gmic-resnet18-1"])
    assert result.exit_code == 0, result.output
    digests = file_digests(weights)
    assert digests.sha256 in result.stdout and digests.git_blob_id in result.stdout
    assert "does NOT match the published file" in result.stdout
    row = _list(runner)["gmic-resnet18-1"]
    assert row["weights_status"] == "imported_unverified"
    assert row["sha256"] == digests.sha256 and row["git_blob_id"] == digests.git_blob_id
    manifest = json.loads((data_dir / "models" / "manifest.json").read_text())
    entry = manifest["models"]["gmic-resnet18-1"]
    assert entry["sha256"] == digests.sha256 and entry["imported_at"]

    verified = runner.invoke(app, ["verify"])
    assert verified.exit_code == 0, verified.output
    assert "ok" in verified.stdout

    with (data_dir / "models" / entry["file"]).open("r+b") as handle:
        handle.seek(1000)
        byte = handle.read(1)
        handle.seek(1000)
        handle.write(bytes([byte[0] ^ 0xFF]))
    tampered = runner.invoke(app, ["verify"])
    assert tampered.exit_code != 0
    assert "gmic-resnet18-1" in tampered.output and "FAILED" in tampered.stdout


def test_import_refuses_wrong_shapes_with_a_clear_message(runner: CliRunner, data_dir: Path,
                                                          fixtures_dir: Path,
                                                          tmp_path: Path) -> None:
    state = torch.load(fixtures_dir / "gmic_resnet18_weights_fp16.pt", weights_only=True)
    state["classifier_linear.weight"] = torch.zeros(3, 512)
    bad = tmp_path / "wrong_shape.pt"
    torch.save(state, bad)
    result = runner.invoke(app, ["import", str(bad), "--as", "gmic-resnet18-2"])
    assert result.exit_code != 0
    assert "classifier_linear.weight" in result.output and "shape" in result.output
    assert _list(runner)["gmic-resnet18-2"]["weights_status"] == "random"


def test_import_of_unknown_model_or_missing_file_fails(runner: CliRunner, data_dir: Path,
                                                       fixtures_dir: Path,
                                                       tmp_path: Path) -> None:
    weights = fixtures_dir / "gmic_resnet18_weights_fp16.pt"
    unknown = runner.invoke(app, ["import", str(weights), "--as", "no-such-model"])
    assert unknown.exit_code != 0 and "unknown model" in unknown.output
    missing = runner.invoke(app, ["import", str(tmp_path / "nope.pt"), "--as", "gmic-resnet18-1"])
    assert missing.exit_code != 0 and "does not exist" in missing.output


def test_list_and_verify_show_the_status_the_bytes_give(runner: CliRunner, data_dir: Path,
                                                        fixtures_dir: Path) -> None:
    """An edited manifest does not change what `models list` / `models verify` report."""
    weights = fixtures_dir / "gmic_resnet18_weights_fp16.pt"
    assert runner.invoke(app, ["import", str(weights), "--as", "gmic-resnet18-1"]).exit_code == 0
    manifest_file = data_dir / "models" / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    row = _list(runner)["gmic-resnet18-1"]
    entry = manifest["models"]["gmic-resnet18-1"]
    entry["status"] = "verified_published"
    entry["git_blob_id"] = row["published_git_blob_id"]
    manifest_file.write_text(json.dumps(manifest))

    row = _list(runner)["gmic-resnet18-1"]
    assert row["weights_status"] == "imported_unverified" and row["validation"] is None
    assert "not that of the published file" in row["weights_status_reason"]
    assert row["verifiable"] is True
    verified = runner.invoke(app, ["verify"])
    assert verified.exit_code == 0, verified.output
    assert "[imported_unverified]" in verified.stdout


def test_verify_says_why_dmv_cnn_weights_cannot_be_verified(runner: CliRunner, data_dir: Path,
                                                            fixtures_dir: Path) -> None:
    weights = fixtures_dir / "dmv_cnn_view_split_weights_fp16.pt"
    imported = runner.invoke(app, ["import", str(weights), "--as", "dmv-cnn-image-only"])
    assert imported.exit_code == 0, imported.output
    result = runner.invoke(app, ["verify", "dmv-cnn-image-only"])
    assert result.exit_code == 0, result.output
    assert "dmv-cnn-image-only cannot be verified by this installation" in result.stdout
    assert "sample exam 0" in result.stdout and "TRIAGE_ALLOW_UNCALIBRATED=1" in result.stdout
    row = _list(runner)["dmv-cnn-image-only"]
    assert row["verifiable"] is False and row["weights_status"] == "imported_unverified"
    gmic3d = runner.invoke(app, ["verify", "gmic3d-resnet18-1"])
    assert gmic3d.exit_code != 0  # nothing imported for it
    assert "gmic3d-resnet18-1 cannot be verified" in gmic3d.stdout
