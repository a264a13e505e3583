"""`triage exams list` filters, truncation and its bounded statements; `triage exams show`
as text and JSON (typer's CliRunner on an SQLite database built by `triage db upgrade`)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from tests.exam_detail_rows import CALLING_AE, PACS, PATIENT_ID, VNA, RunSpec, add_exam
from tests.unit.test_worklist_queries import statements_during
from triage.cli import app
from triage.db import Database, create_database
from triage.db.exam_detail import exam_detail
from triage.db.queries import list_exams

runner = CliRunner()
NOW = datetime.now(UTC)


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TRIAGE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("TRIAGE_CONFIG", raising=False)
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    db = create_database(f"sqlite:///{(tmp_path / 'data' / 'triage.db').resolve()}")
    with db.session() as s:
        add_exam(s, "1.1.recent", [RunSpec(model_set="ms-a", category="HIGH", score=0.8)],
                 accession="ACC-R", received=NOW - timedelta(hours=2))
        add_exam(s, "1.1.old", [RunSpec(model_set="ms-b", category="ROUTINE", score=0.05)],
                 accession="ACC-O", received=NOW - timedelta(days=3))
        add_exam(s, "1.1.rescored", [
            RunSpec(model_set="ms-b", category="NOT TRIAGED", score=0.5, verified=False,
                    not_triaged_reason="weights not verified", minutes=5),
            RunSpec(model_set="ms-a", category="MEDIUM", score=0.3, minutes=9)],
            accession="ACC_X", status="scored", received=NOW - timedelta(hours=5))
        add_exam(s, "1.1.failed", [], accession="ACC-F", status="failed",
                 received=NOW - timedelta(hours=1))
    db.dispose()
    return tmp_path / "data"


def _listed(*args: str) -> list[str]:
    result = runner.invoke(app, ["exams", "list", "--json", *args])
    assert result.exit_code == 0, result.output
    return [e["study_instance_uid"] for e in json.loads(result.stdout)]


def test_list_filters_by_status_category_model_set_accession_and_since(data_dir: Path) -> None:
    assert _listed() == ["1.1.failed", "1.1.recent", "1.1.rescored", "1.1.old"]
    assert _listed("--status", "scored") == ["1.1.rescored"]
    assert _listed("--category", "HIGH") == ["1.1.recent"]
    # the latest run decides the category: the re-score's, not the first run's
    assert _listed("--category", "MEDIUM") == ["1.1.rescored"]
    assert _listed("--category", "NOT TRIAGED") == []
    # any run by that model set, newest activity first
    assert _listed("--model-set", "ms-b") == ["1.1.rescored", "1.1.old"]
    assert _listed("--accession", "ACC_X") == ["1.1.rescored"]
    assert _listed("--since", "24h") == ["1.1.failed", "1.1.recent", "1.1.rescored"]
    assert _listed("--since", "4h", "--model-set", "ms-a") == ["1.1.recent"]
    since = (NOW - timedelta(hours=3)).isoformat()
    assert _listed("--since", since) == ["1.1.failed", "1.1.recent"]


def test_list_filters_are_values_not_sql_or_patterns(data_dir: Path) -> None:
    assert _listed("--accession", "ACC%") == []
    assert _listed("--accession", "ACC_R") == []  # _ is not a wildcard
    assert _listed("--accession", "' OR '1'='1") == []
    assert _listed("--model-set", "x' OR 1=1 --") == []
    assert _listed("--status", "failed") == ["1.1.failed"]  # the table is still there


def test_list_says_when_it_truncates(data_dir: Path) -> None:
    text = runner.invoke(app, ["exams", "list", "--limit", "2"])
    assert text.exit_code == 0, text.output
    assert text.stdout.splitlines()[-1] == "showing 2 of 4 exams; use --limit to see more"
    as_json = runner.invoke(app, ["exams", "list", "--json", "--limit", "2"])
    assert len(json.loads(as_json.stdout)) == 2
    assert "showing 2 of 4 exams; use --limit to see more" in as_json.stderr
    whole = runner.invoke(app, ["exams", "list", "--status", "scored", "--limit", "1"])
    assert whole.stdout.splitlines()[-1] == "1 exam(s)" and "showing" not in whole.output


def test_list_lines_show_status_category_score_model_set_and_views(data_dir: Path) -> None:
    out = runner.invoke(app, ["exams", "list"]).stdout
    line = next(ln for ln in out.splitlines() if ln.endswith("1.1.rescored"))
    assert line.split()[2:8] == ["scored", "MEDIUM", "0.300", "ms-a", "ACC_X",
                                 "L-CC,L-MLO,R-CC,R-MLO"]
    failed = next(ln for ln in out.splitlines() if ln.endswith("1.1.failed"))
    assert failed.split()[2:6] == ["failed", "-", "-", "-"]


def test_list_refuses_an_unknown_status_naming_the_option(data_dir: Path) -> None:
    result = runner.invoke(app, ["exams", "list", "--status", "bogus"])
    assert result.exit_code == 1
    assert "--status 'bogus' is not an exam status" in result.stderr
    assert "Traceback" not in result.output
    bad_since = runner.invoke(app, ["exams", "list", "--since", "yesterday"])
    assert bad_since.exit_code == 2 and "--since" in bad_since.output


def test_list_with_an_unconfigured_category_says_so(data_dir: Path) -> None:
    result = runner.invoke(app, ["exams", "list", "--category", "HGIH"])
    assert result.exit_code == 0
    assert result.stdout.strip() == (
        "no exams (category 'HGIH' is not one of the configured categories: "
        "HIGH, MEDIUM, ROUTINE, PARTIAL, NOT TRIAGED)")


def _show(*args: str) -> Result:
    result = runner.invoke(app, ["exams", "show", *args])
    assert result.exit_code == 0, result.output
    return result


def test_show_prints_runs_scores_calling_ae_outbox_and_audit_events(data_dir: Path) -> None:
    out = _show("1.1.rescored").stdout
    lines = out.splitlines()
    assert lines[0] == "exam 1.1.rescored"
    assert f"  calling AE     {CALLING_AE}" in lines
    first = next(ln for ln in lines if ln.startswith("  run 1:"))
    assert first.startswith("  run 1: ms-b  succeeded  NOT TRIAGED  score 0.500  UNVERIFIED")
    assert "    not triaged: weights not verified" in lines
    assert next(ln for ln in lines if ln.startswith("  run 2")).startswith(
        "  run 2 (latest): ms-a  succeeded  MEDIUM  score 0.300  verified")
    header = next(ln for ln in lines if "P(malignant)" in ln).split()
    assert header == ["P(malignant)", "L-CC", "L-MLO", "R-CC", "R-MLO", "breast", "L",
                      "breast", "R", "exam"]
    member_rows = [ln.split() for ln in lines if ln.strip().startswith("gmic-resnet18-2  ")]
    assert member_rows[0] == ["gmic-resnet18-2", "0.300", "0.310", "0.320", "0.330", "0.400",
                              "0.400", "-"]
    ensemble_rows = [ln.split() for ln in lines if ln.strip().startswith("ensemble")]
    assert [r[-1] for r in ensemble_rows] == ["0.500", "0.300"]  # exam score of each run
    assert "      dmv-cnn-image-only 1.0  weight 0  imported_unverified  sha256 -  " \
           "left out: the exam lacks R-MLO" in lines
    srs = [n for n, ln in enumerate(lines) if ln.strip().startswith("sr_tid1500")]
    assert [lines[n].split()[1] for n in srs] == ["1.1.rescored.500.0", "1.1.rescored.500.1"]
    for n in srs:  # the object, then its state at each destination
        assert lines[n + 1].split(None, 3)[:3] == ["->", PACS, "sent"]
        assert lines[n + 2].split(None, 2) == [
            "->", VNA, "failed after 3 attempt(s): 0xA900 SOP class not supported"]
    overlays = [n for n, ln in enumerate(lines) if ln.strip().startswith("sc_overlay")]
    assert [lines[n + 1].split() for n in overlays] == [["->", PACS, "pending"]] * 2
    assert "audit events (2):" in lines
    assert any(" outbox_retry  1.1.rescored.500.0  " in ln for ln in lines)
    assert "instances (5):" in lines
    assert any("not scored: CT Image Storage is not a mammogram" in ln for ln in lines)


def test_show_hides_patient_ids_unless_asked(data_dir: Path) -> None:
    hidden = _show("1.1.recent")
    assert PATIENT_ID not in hidden.output and "OTHER-PID-42" not in hidden.output
    assert "  patient ID     hidden (--patient-id shows it)" in hidden.stdout.splitlines()
    shown = _show("1.1.recent", "--patient-id").stdout
    assert f"  patient ID     {PATIENT_ID} (issuer HOSP)" in shown.splitlines()
    assert "OTHER-PID-42" in shown  # the audit event's conflicting identity
    as_json = json.loads(_show("1.1.recent", "--json").stdout)
    assert as_json["patient_id"] is None and PATIENT_ID not in json.dumps(as_json)


def test_show_json_is_exam_detail_to_dict(data_dir: Path) -> None:
    printed = json.loads(_show("1.1.rescored", "--json").stdout)
    db = create_database(f"sqlite:///{(data_dir / 'triage.db').resolve()}")
    with db.session() as session:
        detail = exam_detail(session, "1.1.rescored")
    db.dispose()
    assert detail is not None and printed == detail.to_dict()
    assert [r["model_set_version"] for r in printed["runs"]] == ["ms-b", "ms-a"]
    sr = printed["runs"][1]["outputs"][0]
    assert [(d["destination"], d["status"]) for d in sr["deliveries"]] == [
        (PACS, "sent"), (VNA, "failed")]


def test_show_an_unknown_exam_fails_with_a_clear_message(data_dir: Path) -> None:
    result = runner.invoke(app, ["exams", "show", "9.9.9"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "no exam with Study Instance UID '9.9.9' is known" in result.stderr


def test_list_reads_in_three_statements_whatever_the_number_of_exams(sqlite_db: Database) -> None:
    def count() -> int:
        def read() -> None:
            with sqlite_db.session() as session:
                list_exams(session, limit=100)
        return statements_during(sqlite_db, read)

    with sqlite_db.session() as s:
        add_exam(s, "3.0", [RunSpec()])
    one = count()
    with sqlite_db.session() as s:
        for n in range(1, 30):
            add_exam(s, f"3.{n}", [RunSpec(), RunSpec(model_set="ms-2", minutes=20)])
    assert one == count() == 3  # the count, the page, the views on the page


def test_show_is_written_to_the_query_audit(data_dir: Path) -> None:
    from sqlalchemy import select

    from triage.db.models import QueryAudit

    _show("1.1.recent")
    db = create_database(f"sqlite:///{(data_dir / 'triage.db').resolve()}")
    with db.session() as session:
        rows = session.scalars(select(QueryAudit)).all()
        assert [(r.channel, r.rows, r.filters["study_instance_uid"]) for r in rows] == [
            ("cli", 1, "1.1.recent")]
        assert rows[0].who.startswith("cli:")
    db.dispose()
