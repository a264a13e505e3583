"""The foundation commands: config show, db upgrade/downgrade, exams list/show."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from triage.cli import app
from triage.db import Instance, Study, create_database

runner = CliRunner()


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TRIAGE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("TRIAGE_CONFIG", raising=False)
    return tmp_path / "data"


def test_config_show_prints_effective_settings_with_password_masked(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRIAGE_DATABASE_URL", "postgresql+psycopg://u:hunter2@db/triage")
    result = runner.invoke(app, ["config", "show"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["ae_title"] == "TRIAGE" and "hunter2" not in result.output


def test_config_show_says_whether_shadow_mode_is_active(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shown = json.loads(runner.invoke(app, ["config", "show"]).output)
    assert shown["send_unverified"] is False
    assert shown["modes"]["unverified_results"].startswith("shadow mode")
    monkeypatch.setenv("TRIAGE_SEND_UNVERIFIED", "1")
    shown = json.loads(runner.invoke(app, ["config", "show"]).output)
    assert shown["modes"]["unverified_results"].startswith("sent to the archive")


def test_config_show_fails_with_the_setting_named(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIAGE_DICOM_PORT", "99999")
    result = runner.invoke(app, ["config", "show"])
    assert result.exit_code == 2 and "TRIAGE_DICOM_PORT" in result.output


def test_db_upgrade_then_downgrade_to_base(env: Path) -> None:
    up = runner.invoke(app, ["db", "upgrade"])
    assert up.exit_code == 0, up.output
    assert "revision 0003" in up.output
    down = runner.invoke(app, ["db", "downgrade", "base"])
    assert down.exit_code == 0 and "revision None" in down.output


def _seed(data_dir: Path) -> None:
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    db = create_database(f"sqlite:///{(data_dir / 'triage.db').resolve()}")
    with db.session() as session:
        study = Study(grouping_key="1.2.840.1", study_instance_uid="1.2.840.1",
                      accession_numbers=["ACC1"], status="receiving")
        session.add(study)
        session.flush()
        for i, (lat, view, scorable, reason) in enumerate(
            [("L", "CC", True, None), ("R", "CC", True, None), (None, None, False, "CT image")]
        ):
            session.add(Instance(
                study_id=study.id, sop_instance_uid=f"1.2.840.1.{i}", sop_class_uid="1.2.3",
                image_class="ffdm" if scorable else "other", view=view, laterality=lat,
                scorable=scorable, reason=reason, chosen=scorable, path=f"/x/{i}",
                content_digest=str(i), size_bytes=1,
            ))
    db.dispose()


def test_exams_show_json_lists_instances_with_classification(env: Path) -> None:
    _seed(env)
    result = runner.invoke(app, ["exams", "show", "1.2.840.1", "--json"])
    assert result.exit_code == 0, result.output
    detail = json.loads(result.output)
    assert detail["study_instance_uid"] == "1.2.840.1"
    assert detail["accession_numbers"] == ["ACC1"] and detail["status"] == "receiving"
    assert detail["views"] == ["L-CC", "R-CC"] and detail["partial"] is False
    assert detail["skipped_reason"] is None
    ct = next(i for i in detail["instances"] if i["sop_instance_uid"] == "1.2.840.1.2")
    assert ct["scorable"] is False and ct["reason"] == "CT image" and ct["image_class"] == "other"
    listed = json.loads(runner.invoke(app, ["exams", "list", "--json"]).output)
    assert [e["study_instance_uid"] for e in listed] == ["1.2.840.1"]


def test_exams_show_unknown_uid_exits_non_zero_with_a_clear_message(env: Path) -> None:
    _seed(env)
    result = runner.invoke(app, ["exams", "show", "9.9.9"])
    assert result.exit_code == 1
    assert "no exam with Study Instance UID '9.9.9'" in result.output
