"""Logging: the study UID under one key on every line about a study, the JSON lines log file
(TRIAGE_LOG_FILE, rotated), `triage logs --study UID`, and no patient names or IDs in logs."""

from __future__ import annotations

import ast
import json
import logging
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from triage.cli import app
from triage.config import load_settings
from triage.logs import (
    STUDY_KEY,
    PlainFormatter,
    log_files,
    setup_logging,
    study_context,
    study_lines,
)
from triage.models import ensure_demo_weights
from triage.synthetic import ExamSpec, generate_exam
from triage.synthetic.specs import study_identity_for_seed

ROOT = Path(__file__).resolve().parents[2]
LOG_METHODS = {"debug", "info", "warning", "error", "exception", "critical", "log"}
runner = CliRunner()


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)


def _other_study_keys(tree: ast.AST) -> list[tuple[int, str]]:
    """Line numbers of log ``extra`` fields naming a study under another key than STUDY_KEY."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        extras = [k.value for k in node.keywords if k.arg == "extra"] \
            if name in LOG_METHODS else []
        if name == "dict" or name.endswith("extra"):  # extra=dict(...), self._extra(...)
            found += [(node.lineno, k.arg) for k in node.keywords
                      if k.arg and "study" in k.arg and "uid" in k.arg and k.arg != STUDY_KEY]
        for value in extras:
            if isinstance(value, ast.Dict):
                found += [(node.lineno, k.value) for k in value.keys
                          if isinstance(k, ast.Constant) and isinstance(k.value, str)
                          and "study" in k.value and "uid" in k.value and k.value != STUDY_KEY]
    return found


def test_log_calls_name_the_study_only_under_study_instance_uid() -> None:
    offenders = []
    for path in sorted((ROOT / "triage").rglob("*.py")) + sorted((ROOT / "workers").rglob("*.py")):
        for line, key in _other_study_keys(ast.parse(path.read_text())):
            offenders.append(f"{path.relative_to(ROOT)}:{line} logs the study as {key!r}")
    assert not offenders, "use extra={'study_instance_uid': ...}:\n" + "\n".join(offenders)


def test_the_key_check_catches_the_old_spellings() -> None:
    sample = ast.parse('log.info("x", extra={"study_uid": u})\n'
                       'e = self._extra(r, study_uid=u)\n'
                       'log.info("y", extra={"study_instance_uid": u})\n')
    assert _other_study_keys(sample) == [(1, "study_uid"), (2, "study_uid")]


def test_lines_in_a_study_context_carry_its_uid_unless_they_name_one(
    tmp_path: Path, restore_logging: None
) -> None:
    log_file = tmp_path / "logs" / "triage.jsonl"
    setup_logging("DEBUG", log_file=log_file)
    log = logging.getLogger("triage.imaging.decode")
    with study_context("1.2.3"):
        log.debug("decoded", extra={"sop_instance_uid": "1.2.3.4"})
        log.info("other study", extra={STUDY_KEY: "9.9"})
    log.info("outside")
    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert [(e["msg"], e.get(STUDY_KEY)) for e in lines] == [
        ("decoded", "1.2.3"), ("other study", "9.9"), ("outside", None)]
    assert lines[0]["sop_instance_uid"] == "1.2.3.4" and lines[0]["level"] == "debug"


def test_the_log_file_rotates_and_a_study_is_read_back_across_its_backups_in_order(
    tmp_path: Path, restore_logging: None
) -> None:
    log_file = tmp_path / "triage.jsonl"
    setup_logging("INFO", log_file=log_file, max_bytes=2000, backups=20)
    log = logging.getLogger("triage.test")
    for i in range(60):
        log.info("step", extra={STUDY_KEY: "1.2.3" if i % 2 else "4.5.6", "i": i})
    files = log_files(log_file)
    assert len(files) > 3 and files[-1] == log_file and files[-2].name == "triage.jsonl.1"
    found = list(study_lines(files, "1.2.3"))
    assert [e["i"] for e in found] == list(range(1, 60, 2))


def test_plain_stderr_lines_show_the_extra_fields() -> None:
    record = logging.LogRecord("triage.x", logging.INFO, __file__, 1, "exam scored", None, None)
    record.study_instance_uid = "1.2.3"
    assert PlainFormatter().format(record).endswith("exam scored study_instance_uid=1.2.3")


# ---- `triage logs` -------------------------------------------------------------------------

@pytest.fixture
def log_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TRIAGE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("TRIAGE_CONFIG", raising=False)
    log_file = tmp_path / "triage.jsonl"
    entries = [{"ts": "2026-01-01T00:00:00.000+00:00", "level": "info", "logger": "a",
                "msg": "instance stored", STUDY_KEY: "1.2.3", "sop_instance_uid": "1.2.3.1"},
               {"ts": "2026-01-01T00:00:01.000+00:00", "level": "info", "logger": "a",
                "msg": "instance stored", STUDY_KEY: "1.2.30"},
               {"ts": "2026-01-01T00:00:02.000+00:00", "level": "info", "logger": "b",
                "msg": "exam scored", STUDY_KEY: "1.2.3", "score": 0.4}]
    log_file.write_text("\n".join(json.dumps(e) for e in entries) + "\nnot json 1.2.3\n")
    return log_file


def test_logs_prints_only_the_lines_of_the_study_asked_for(
    log_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRIAGE_LOG_FILE", str(log_env))
    result = runner.invoke(app, ["logs", "--study", "1.2.3"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    assert "instance stored" in lines[0] and "sop_instance_uid=1.2.3.1" in lines[0]
    assert "exam scored" in lines[1] and "score=0.4" in lines[1]
    as_json = json.loads(runner.invoke(app, ["logs", "--study", "1.2.3", "--json"]).stdout)
    assert [e["msg"] for e in as_json] == ["instance stored", "exam scored"]


def test_logs_reads_a_file_given_on_the_command_line(log_env: Path) -> None:
    result = runner.invoke(app, ["logs", "--study", "1.2.30", "--file", str(log_env), "--json"])
    assert result.exit_code == 0 and len(json.loads(result.stdout)) == 1


def test_logs_without_a_log_file_says_what_to_set(log_env: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRIAGE_LOG_FILE", raising=False)
    result = runner.invoke(app, ["logs", "--study", "1.2.3"])
    assert result.exit_code == 2 and "TRIAGE_LOG_FILE" in result.output
    missing = runner.invoke(app, ["logs", "--study", "1.2.3", "--file", str(log_env) + ".nope"])
    assert missing.exit_code == 1 and "no log file at" in missing.output


# ---- no patient names in logs ---------------------------------------------------------------

MEMBER = "gmic-testing-small"
PATIENT_NAME = "Zyxwvutsky^Quirinella"
PATIENT_ID = "PIDQ7731XZ"


def test_scoring_an_exam_never_logs_the_patient_name_or_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restore_logging: None
) -> None:
    log_file = tmp_path / "logs" / "triage.jsonl"
    for key, value in {
        "TRIAGE_DATA_DIR": str(tmp_path / "data"), "TRIAGE_TESTING": "1",
        "TRIAGE_ALLOW_UNCALIBRATED": "1", "TRIAGE_DEVICE": "cpu", "TRIAGE_LOG_LEVEL": "DEBUG",
        "TRIAGE_ENSEMBLE": json.dumps([{"name": MEMBER, "weight": 1.0}]),
        "TRIAGE_LOG_FILE": str(log_file),
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("TRIAGE_CONFIG", raising=False)
    settings = load_settings()
    settings.prepare_directories()
    ensure_demo_weights(settings, [MEMBER])
    identity = replace(study_identity_for_seed(11), patient_name=PATIENT_NAME,
                       patient_id=PATIENT_ID)
    exam = generate_exam(ExamSpec(seed=11, scale=0.25, lesion=True, study=identity),
                         tmp_path / "in")
    result = runner.invoke(app, ["score-folder", str(tmp_path / "in")])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["exams"][exam.study_instance_uid] == "scored"

    text = log_file.read_text()
    for secret in (PATIENT_NAME, *PATIENT_NAME.split("^"), PATIENT_ID):
        assert secret.lower() not in text.lower(), f"{secret!r} is in the log"
    shown = runner.invoke(app, ["logs", "--study", exam.study_instance_uid, "--json"])
    messages = [e["msg"] for e in json.loads(shown.stdout)]
    assert "scoring exam" in messages and "exam scored" in messages
    assert "decoded pixels" in messages  # lines of the layers below carry the study too


def test_the_embedded_pipeline_with_its_outputs_never_logs_the_patient_name_or_id(
    tmp_path: Path, restore_logging: None
) -> None:
    """The product path: claim, score, build SR and overlays (which copy the patient
    attributes), record the outbox, deliver to the local outputs folder."""
    from triage.batch import ingest_folder
    from triage.db import create_database
    from triage.db.migrate import upgrade
    from triage.delivery.publisher import Publisher
    from triage.dispatch import enqueue_ready
    from triage.pipeline import Outcome, load_ensemble, process_study

    log_file = tmp_path / "triage.jsonl"
    settings = load_settings(data_dir=tmp_path / "data", testing=True, allow_uncalibrated=True,
                             device="cpu", ensemble=[{"name": MEMBER, "weight": 1.0}],
                             quiet_seconds=1, max_wait_seconds=5)
    settings.prepare_directories()
    setup_logging("DEBUG", log_file=log_file)
    ensure_demo_weights(settings, [MEMBER])
    upgrade(settings.resolved_database_url)
    db = create_database(settings.resolved_database_url)
    identity = replace(study_identity_for_seed(12), patient_name=PATIENT_NAME,
                       patient_id=PATIENT_ID)
    exam = generate_exam(ExamSpec(seed=12, scale=0.25, lesion=True, study=identity),
                         tmp_path / "in")
    ingest_folder(db, settings, tmp_path / "in")
    (study_id,) = enqueue_ready(db, None)
    outcome = process_study(db, load_ensemble(settings), study_id, Publisher(settings))
    db.dispose()
    assert outcome is Outcome.SCORED
    assert any((settings.outputs_dir / exam.study_instance_uid).iterdir())

    text = log_file.read_text()
    for secret in (PATIENT_NAME, *PATIENT_NAME.split("^"), PATIENT_ID):
        assert secret.lower() not in text.lower(), f"{secret!r} is in the log"
    lines = list(study_lines([log_file], exam.study_instance_uid))
    assert {"scoring exam", "exam scored"} <= {e["msg"] for e in lines}
    assert any(e["logger"].startswith("triage.outputs") for e in lines)
