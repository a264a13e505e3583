"""`triage worklist`: priority order, then arrival; NOT TRIAGED with the reason."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from triage.cli import app
from triage.db import ScoringRun, Study, create_database
from triage.db.migrate import upgrade

runner = CliRunner()
T0 = datetime(2026, 1, 1, 8, 0, tzinfo=UTC)


def _exam(session, uid: str, minute: int, status: str, category: str | None = None,  # type: ignore[no-untyped-def]
          score: float | None = None, reason: str | None = None, skip: str | None = None) -> None:
    study = Study(grouping_key=uid, study_instance_uid=uid, status=status, skip_reason=skip,
                  first_received_at=T0 + timedelta(minutes=minute))
    session.add(study)
    session.flush()
    if category:
        session.add(ScoringRun(study_id=study.id, model_set_version="ms", instances_digest=uid,
                               status="succeeded", category=category, exam_score=score,
                               not_triaged_reason=reason, finished_at=T0))


def test_worklist_orders_by_priority_then_arrival(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIAGE_DATA_DIR", str(tmp_path))
    url = f"sqlite:///{tmp_path / 'triage.db'}"
    upgrade(url)
    db = create_database(url)
    with db.session() as s:
        _exam(s, "1.1", 0, "delivered", "ROUTINE", 0.05)
        _exam(s, "1.2", 1, "delivered", "HIGH", 0.7)
        _exam(s, "1.3", 2, "scored", "NOT TRIAGED", 0.9, reason="weights not verified")
        _exam(s, "1.4", 3, "delivered", "HIGH", 0.6)
        _exam(s, "1.5", 4, "skipped", skip="no scorable image")
        _exam(s, "1.6", 5, "receiving")
    db.dispose()
    result = runner.invoke(app, ["worklist", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["study_instance_uid"] for r in rows] == ["1.2", "1.4", "1.1", "1.3", "1.5", "1.6"]
    by_uid = {r["study_instance_uid"]: r for r in rows}
    assert by_uid["1.3"]["category"] == "NOT TRIAGED" and by_uid["1.3"]["score"] == 0.9
    assert by_uid["1.3"]["reason"] == "weights not verified"
    assert by_uid["1.5"]["reason"] == "skipped: no scorable image"
    assert by_uid["1.6"]["reason"] == "not scored yet (receiving)"
    text = runner.invoke(app, ["worklist"]).stdout
    assert text.index("1.2") < text.index("1.1") < text.index("1.3")
