"""`triage tokens`, `triage scores history` and `triage audit`: tokens stored hashed and shown
once, history as text, JSON and CSV from the same query function as the API, and every
history query of the CLI in the audit as cli:<user>."""

from __future__ import annotations

import csv
import getpass
import io
import json
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from tests.history_rows import RunRow, add_runs
from triage.cli import app
from triage.db import Database, create_database
from triage.db.models import ApiToken
from triage.db.tokens import authenticate, hash_secret

runner = CliRunner()


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Database:
    for name in ("TRIAGE_CONFIG", "TRIAGE_DATABASE_URL", "TRIAGE_API_SHOW_PATIENT_IDS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TRIAGE_DATA_DIR", str(tmp_path / "data"))
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    database = create_database(f"sqlite:///{(tmp_path / 'data' / 'triage.db').resolve()}")
    yield database  # type: ignore[misc]
    database.dispose()


def _create(role: str, name: str) -> str:
    result = runner.invoke(app, ["tokens", "create", "--role", role, "--name", name])
    assert result.exit_code == 0, result.output
    return result.output.strip().splitlines()[-1].split()[-1]


def test_token_is_printed_once_as_the_last_word_and_only_its_sha256_is_stored(db: Database) -> None:
    secret = _create("admin", "ops")
    with db.session() as session:
        row = session.scalars(select(ApiToken)).one()
        assert row.secret_sha256 == hash_secret(secret) and secret not in row.secret_sha256
        info = authenticate(session, secret)
        assert info is not None and info.name == "ops" and info.role.value == "admin"
    listed = runner.invoke(app, ["tokens", "list"])
    assert listed.exit_code == 0 and "ops" in listed.output and "admin" in listed.output
    assert secret not in listed.output and hash_secret(secret) not in listed.output
    as_json = json.loads(runner.invoke(app, ["tokens", "list", "--json"]).output)
    assert as_json[0]["name"] == "ops" and as_json[0]["active"] is True


def test_revoked_token_stops_working_and_its_name_stays_reserved(db: Database) -> None:
    secret = _create("viewer", "rr1")
    revoked = runner.invoke(app, ["tokens", "revoke", "rr1"])
    assert revoked.exit_code == 0 and "revoked viewer token 'rr1'" in revoked.output
    with db.session() as session:
        assert authenticate(session, secret) is None
    again = runner.invoke(app, ["tokens", "create", "--role", "viewer", "--name", "rr1"])
    assert again.exit_code == 1 and "already exists (revoked)" in again.output
    twice = runner.invoke(app, ["tokens", "revoke", "rr1"])
    assert twice.exit_code == 1 and "already revoked" in twice.output
    unknown = runner.invoke(app, ["tokens", "revoke", "nobody"])
    assert unknown.exit_code == 1 and "triage tokens list" in unknown.output


@pytest.mark.parametrize(("args", "message"), [
    (["--role", "root", "--name", "x"], "unknown role 'root': use one of viewer, admin"),
    (["--role", "viewer", "--name", "bad name; --"], "token name 'bad name; --' is not usable"),
])
def test_token_creation_refuses_an_unknown_role_or_an_unusable_name(
        db: Database, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["tokens", "create", *args])
    assert result.exit_code == 1 and message in result.output
    assert "Traceback" not in result.output


def test_scores_history_prints_a_page_json_and_csv_and_the_audit_names_the_os_user(db: Database) -> None:
    with db.session() as session:
        add_runs(session, [RunRow(f"9.{i}", score=0.1 * i, category="MEDIUM") for i in range(5)])
    text = runner.invoke(app, ["scores", "history", "--limit", "2"])
    assert text.exit_code == 0, text.output
    lines = text.output.strip().splitlines()
    assert len(lines) == 3 and "9.4" in lines[0] and lines[-1].startswith("2 runs shown; more: --cursor ")
    cursor = lines[-1].split()[-1]
    page2 = json.loads(runner.invoke(app, ["scores", "history", "--limit", "2", "--cursor", cursor,
                                           "--json"]).output)
    assert [r["study_instance_uid"] for r in page2["rows"]] == ["9.2", "9.1"]
    assert "patient_id" not in page2["rows"][0]
    exported = runner.invoke(app, ["scores", "history", "--csv", "--accession", "A9.3"])
    assert exported.exit_code == 0, exported.output
    records = list(csv.DictReader(io.StringIO(exported.output)))
    assert [r["study_instance_uid"] for r in records] == ["9.3"]
    assert records[0]["left_p_malignant"] and "patient_id" not in records[0]

    audit = json.loads(runner.invoke(app, ["audit", "--json"]).output)["entries"]
    assert [e["who"] for e in audit] == [f"cli:{getpass.getuser()}"] * 3
    assert audit[0]["filters"] == {"accession": "A9.3", "format": "csv"} and audit[0]["rows"] == 1
    assert audit[0]["channel"] == "cli" and audit[2]["rows"] == 2
    shown = runner.invoke(app, ["audit"])
    assert shown.exit_code == 0 and "scores.history" in shown.output and "accession=A9.3" in shown.output


def test_scores_history_bad_filter_or_patient_id_without_the_setting_is_an_error_not_a_traceback(
        db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = runner.invoke(app, ["scores", "history", "--min-score", "3"])
    assert bad.exit_code == 1 and "min_score: 3.0 is not a score" in bad.output
    denied = runner.invoke(app, ["scores", "history", "--patient-id", "P1"])
    assert denied.exit_code == 1 and "TRIAGE_API_SHOW_PATIENT_IDS=1" in denied.output
    monkeypatch.setenv("TRIAGE_API_SHOW_PATIENT_IDS", "1")
    with db.session() as session:
        add_runs(session, [RunRow("10.1", patient_id="P1")])
    allowed = json.loads(runner.invoke(app, ["scores", "history", "--patient-id", "P1",
                                             "--json"]).output)
    assert allowed["rows"][0]["patient_id"] == "P1"
    assert "Traceback" not in bad.output + denied.output
