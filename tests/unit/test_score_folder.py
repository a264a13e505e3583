"""`triage score-folder`: a folder of DICOM files grouped into exams and scored offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from triage.cli import app
from triage.config import load_settings
from triage.db import ScoringRun, Study, create_database
from triage.models import ensure_demo_weights
from triage.synthetic import ExamSpec, build_ct_image, generate_exam, write_exam

runner = CliRunner()
MEMBER = "gmic-testing-small"


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    data = tmp_path / "data"
    for key, value in {
        "TRIAGE_DATA_DIR": str(data), "TRIAGE_TESTING": "1", "TRIAGE_ALLOW_UNCALIBRATED": "1",
        "TRIAGE_ENSEMBLE": json.dumps([{"name": MEMBER, "weight": 1.0}]), "TRIAGE_DEVICE": "cpu",
        "TRIAGE_LOG_LEVEL": "WARNING",
    }.items():
        monkeypatch.setenv(key, value)
    settings = load_settings()
    settings.prepare_directories()
    ensure_demo_weights(settings, [MEMBER])
    return data


def test_folder_exams_are_grouped_scored_and_written_as_json(env: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    full = generate_exam(ExamSpec(seed=3, scale=0.25, lesion=True), folder / "a")
    ct_only = generate_exam(ExamSpec(seed=4, scale=0.25), tmp_path / "unused")
    write_exam([build_ct_image(ExamSpec(seed=4).identity())], folder / "ct")
    (folder / "notes.txt").write_text("not dicom")
    out = tmp_path / "out"
    result = runner.invoke(app, ["score-folder", str(folder), "--out", str(out)])
    assert result.exit_code == 1, result.output  # the text file is reported as unreadable
    report = json.loads(result.stdout)
    assert report["files_seen"] == 6 and report["files_recorded"] == 5
    assert list(report["unreadable"]) == [str(folder / "notes.txt")]
    assert report["exams"][full.study_instance_uid] == "scored"
    assert report["exams"][ct_only.study_instance_uid].startswith("skipped: ")
    written = json.loads((out / f"{full.study_instance_uid}.json").read_text())
    assert {b["laterality"] for b in written["breasts"]} == {"L", "R"}
    assert written["exam_score"] == max(b["p_malignant"] for b in written["breasts"])
    assert written["category"] == "NOT TRIAGED" and written["verified"] is False
    db = create_database(f"sqlite:///{(env / 'triage.db').resolve()}")
    with db.session() as session:
        study = session.query(Study).filter_by(study_instance_uid=full.study_instance_uid).one()
        assert study.status == "scored"
        run = session.query(ScoringRun).filter_by(study_id=study.id).one()
        assert run.exam_score == pytest.approx(written["exam_score"])
    db.dispose()
