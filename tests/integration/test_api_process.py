"""`triage api` as a real process on loopback against PostgreSQL: tokens made with the CLI,
queries with httpx (worklist, exam, history as JSON and CSV, audit), roles, injection strings
as data; and `triage listen` serving the same API next to the DICOM listener."""

from __future__ import annotations

import csv
import io
import re
import subprocess
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from tests.exam_detail_rows import RunSpec as ExamRun
from tests.exam_detail_rows import add_exam
from tests.history_rows import INJECTIONS, RunRow, add_runs
from tests.integration.product_helpers import TRIAGE, ProductProcess, Stack, wait_until
from triage.db import Study
from triage.db.models import utcnow

EXAM_UID = "1.2.826.0.1.3680043.8.498.501"
_URL = re.compile(r"(?:triage API on|API on) (http://127\.0\.0\.1:\d+)")


@pytest.fixture
def stack(tmp_path: Path, postgres_url: str) -> Iterator[Stack]:
    s = Stack(tmp_path, extra_env={"TRIAGE_DATABASE_URL": postgres_url, "TRIAGE_API_PORT": "0"})
    now = utcnow()
    with s.db.session() as session:
        add_runs(session, [RunRow(f"1.2.9.{i}", score=0.1 * i, category="MEDIUM",
                                  minutes_ago=float(i)) for i in range(1, 6)], now=now)
        add_runs(session, [RunRow("1.2.9.99", accessions=(INJECTIONS[0],))], now=now)
        add_exam(session, EXAM_UID, [ExamRun(category="HIGH", score=0.71)],
                 received=now - timedelta(hours=1))
    yield s
    s.close()


def _cli(stack: Stack, *args: str) -> str:
    result = subprocess.run([TRIAGE, *args], env=stack.env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _token(stack: Stack, role: str, name: str) -> dict[str, str]:
    last_line = _cli(stack, "tokens", "create", "--role", role, "--name", name).strip().splitlines()[-1]
    return {"Authorization": f"Bearer {last_line.split()[-1]}"}


def _api_url(process: ProductProcess) -> str:
    def found() -> str | None:
        assert process.alive(), process.log()
        match = _URL.search(process.log())
        return match.group(1) if match else None

    url: str = wait_until(found, 120, "the API address in the log", process.log)
    return url


def test_triage_api_process_answers_tokens_from_the_cli_on_postgresql(stack: Stack) -> None:
    admin, viewer = _token(stack, "admin", "ops"), _token(stack, "viewer", "reading-room-1")
    api = stack.spawn("api")
    url = _api_url(api)
    with httpx.Client(base_url=url, timeout=30) as http:
        assert http.get("/api/v1/worklist").status_code == 401
        worklist = http.get("/api/v1/worklist", headers=viewer).json()
        assert EXAM_UID in [e["study_instance_uid"] for e in worklist["entries"]]

        page = http.get("/api/v1/scores/history", params={"limit": 3}, headers=viewer).json()
        assert [r["study_instance_uid"] for r in page["rows"]] == ["1.2.9.1", "1.2.9.2", "1.2.9.3"]
        rest = http.get("/api/v1/scores/history", params={"limit": 3, "cursor": page["next_cursor"]},
                        headers=viewer).json()
        assert len(rest["rows"]) == 3 and not {r["study_instance_uid"] for r in rest["rows"]} & {
            r["study_instance_uid"] for r in page["rows"]}
        exported = http.get("/api/v1/scores/history", params={"format": "csv", "min_score": 0.35,
                                                            "max_score": 0.6},
                            headers=viewer)
        records = list(csv.DictReader(io.StringIO(exported.text)))
        assert sorted(r["study_instance_uid"] for r in records) == ["1.2.9.4", "1.2.9.5"]

        with stack.db.session() as session:
            studies = session.scalar(select(func.count()).select_from(Study))
        for text in INJECTIONS:
            response = http.get("/api/v1/scores/history", params={"accession": text}, headers=viewer)
            expected = ["1.2.9.99"] if text == INJECTIONS[0] else []
            assert [r["study_instance_uid"] for r in response.json()["rows"]] == expected, text
        with stack.db.session() as session:
            assert session.scalar(select(func.count()).select_from(Study)) == studies

        assert http.get(f"/api/v1/exams/{EXAM_UID}", headers=viewer).json()["runs"][0]["category"] == "HIGH"
        bad = http.get("/api/v1/scores/history", params={"max_score": "2"}, headers=viewer)
        assert bad.status_code == 422 and bad.json()["message"].startswith("max_score: ")
        assert http.get("/api/v1/audit", headers=viewer).status_code == 403
        audit = http.get("/api/v1/audit", headers=admin).json()["entries"]
    assert audit[0] == {**audit[0], "who": "reading-room-1", "query": "exams.detail", "rows": 1}
    assert len([e for e in audit if e["query"] == "scores.history"]) == 3 + len(INJECTIONS)
    assert "reading-room-1" in _cli(stack, "audit")
    _cli(stack, "tokens", "revoke", "reading-room-1")
    assert httpx.get(f"{url}/api/v1/worklist", headers=viewer, timeout=30).status_code == 401
    api.stop()
    assert "triage API stopped" in api.log()


def test_triage_listen_serves_the_api_next_to_the_dicom_listener(stack: Stack) -> None:
    viewer = _token(stack, "viewer", "wall-display")
    listen = stack.spawn("listen")
    url = _api_url(listen)
    response = httpx.get(f"{url}/api/v1/scores/history", headers=viewer, timeout=30)
    rows = {r["study_instance_uid"] for r in response.json()["rows"]}
    assert response.status_code == 200 and {"1.2.9.1", "1.2.9.99"} <= rows
    listen.stop()
