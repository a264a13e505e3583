"""`triage worklist`: a thin face over queries.worklist (one page, priority order, NOT TRIAGED
with the reason, paging hints, --since, --json)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import typer
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from triage.cli import app
from triage.cli.worklist_cmd import parse_since
from triage.db import ScoringRun, Study, create_database
from triage.db.migrate import upgrade

runner = CliRunner()
NOW = datetime.now(UTC)


def _exam(session: Session, uid: str, minutes_ago: int, status: str, category: str | None = None,
          score: float | None = None, reason: str | None = None, skip: str | None = None) -> None:
    at = NOW - timedelta(minutes=minutes_ago)
    study = Study(grouping_key=uid, study_instance_uid=uid, status=status, skip_reason=skip,
                  first_received_at=at, last_received_at=at,
                  delivered_at=at + timedelta(minutes=5) if status == "delivered" else None)
    session.add(study)
    session.flush()
    if category:
        session.add(ScoringRun(study_id=study.id, model_set_version="ms", instances_digest=uid,
                               status="succeeded", category=category, exam_score=score,
                               not_triaged_reason=reason, started_at=at, finished_at=at))


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIAGE_DATA_DIR", str(tmp_path))
    url = f"sqlite:///{tmp_path / 'triage.db'}"
    upgrade(url)
    db = create_database(url)
    with db.session() as s:
        _exam(s, "1.1", 60, "delivered", "ROUTINE", 0.05)
        _exam(s, "1.2", 50, "delivered", "HIGH", 0.7)
        _exam(s, "1.3", 40, "scored", "NOT TRIAGED", 0.9, reason="weights not verified")
        _exam(s, "1.4", 30, "delivered", "HIGH", 0.6)
        _exam(s, "1.5", 20, "skipped", skip="no scorable image")
        _exam(s, "1.6", 10, "receiving")
        _exam(s, "1.7", 3 * 24 * 60, "delivered", "HIGH", 0.8)  # finished days ago
    db.dispose()


def test_worklist_json_is_one_page_by_priority_newest_first_with_paging_fields(site: None) -> None:
    result = runner.invoke(app, ["worklist", "--json"])
    assert result.exit_code == 0, result.output
    page = json.loads(result.stdout)
    rows = page["entries"]
    assert [r["study_instance_uid"] for r in rows] == ["1.4", "1.2", "1.1", "1.6", "1.5", "1.3"]
    assert page["total"] == 6 and page["has_more"] is False and page["next_cursor"] is None
    by_uid = {r["study_instance_uid"]: r for r in rows}
    assert by_uid["1.3"]["category"] == "NOT TRIAGED" and by_uid["1.3"]["score"] == 0.9
    assert by_uid["1.3"]["reason"] == "weights not verified"
    assert by_uid["1.5"]["reason"] == "skipped: no scorable image"
    assert by_uid["1.6"]["reason"] == "not scored yet (receiving)"
    assert by_uid["1.4"]["model_set_version"] == "ms"


def test_worklist_text_says_when_there_are_more_and_how_to_get_them(site: None) -> None:
    first = runner.invoke(app, ["worklist", "--limit", "4"])
    assert first.exit_code == 0, first.output
    assert first.stdout.index("1.4") < first.stdout.index("1.1") < first.stdout.index("1.6")
    assert "reason: not scored yet (receiving)" in first.stdout
    assert "1-4 of 6" in first.stdout and "more: --page 2" in first.stdout
    second = runner.invoke(app, ["worklist", "--limit", "4", "--page", "2"])
    assert "1.5" in second.stdout and "1.3" in second.stdout and "1.4" not in second.stdout
    assert "5-6 of 6" in second.stdout and "more:" not in second.stdout
    cursor = json.loads(runner.invoke(app, ["worklist", "--json", "--limit", "4"]).stdout)["next_cursor"]
    by_cursor = runner.invoke(app, ["worklist", "--limit", "4", "--cursor", cursor])
    assert by_cursor.exit_code == 0, by_cursor.output
    assert "2 after the cursor of 6" in by_cursor.stdout


def test_worklist_since_widens_the_window_for_finished_exams(site: None) -> None:
    default = runner.invoke(app, ["worklist"]).stdout
    assert "1.7" not in default
    wide = runner.invoke(app, ["worklist", "--since", "7d", "--json"]).stdout
    assert "1.7" in [r["study_instance_uid"] for r in json.loads(wide)["entries"]]


def test_worklist_filters_by_category_and_refuses_unknown_ones(site: None) -> None:
    high = json.loads(runner.invoke(app, ["worklist", "--json", "--category", "HIGH"]).stdout)
    assert [r["study_instance_uid"] for r in high["entries"]] == ["1.4", "1.2"]
    unknown = runner.invoke(app, ["worklist", "--category", "URGENT"])
    assert unknown.exit_code == 1
    assert "HIGH, MEDIUM, ROUTINE, PARTIAL, NOT TRIAGED" in unknown.output
    bad_status = runner.invoke(app, ["worklist", "--status", "done"])
    assert bad_status.exit_code == 1 and "receiving" in bad_status.output


def test_since_takes_a_duration_or_an_iso_time_with_offset() -> None:
    now = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
    assert parse_since("24h", now) == now - timedelta(hours=24)
    assert parse_since("90m", now) == now - timedelta(minutes=90)
    assert parse_since("7d", now) == now - timedelta(days=7)
    assert parse_since("2026-03-01T08:00+01:00", now) == datetime(2026, 3, 1, 7, 0, tzinfo=UTC)
    for bad in ("yesterday", "2026-03-01T08:00", "24"):
        with pytest.raises(typer.BadParameter):
            parse_since(bad, now)
