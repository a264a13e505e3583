"""The HTTP API through FastAPI's TestClient on the real app factory and a migrated SQLite
database: tokens and roles, 422 naming the field, injection strings as data, CSV, cursor
paging, the query audit, patient IDs and unverified scores, and the OpenAPI schema."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from tests.exam_detail_rows import PATIENT_ID, add_exam
from tests.exam_detail_rows import RunSpec as ExamRun
from tests.history_rows import INJECTIONS, RunRow, add_runs
from triage.api.app import create_app
from triage.api.auth import OPEN_PATHS
from triage.config import Settings
from triage.db import Database, Study
from triage.db.access import Role
from triage.db.models import QueryAudit
from triage.db.tokens import create_token, revoke_token

EXAM_UID = "1.2.826.0.1.3680043.8.498.77"
UNVERIFIED_UID = "1.2.826.0.1.3680043.8.498.78"


@pytest.fixture
def db(sqlite_db: Database) -> Database:
    with sqlite_db.session() as s:
        add_runs(s, [RunRow(f"1.2.{i}", score=round(0.01 * i, 3), minutes_ago=float(i // 3))
                     for i in range(40)])
        add_runs(s, [RunRow("1.3.1", accessions=(INJECTIONS[0],), patient_id=INJECTIONS[1])])
        add_exam(s, EXAM_UID, [ExamRun(category="HIGH", score=0.71)])
        add_exam(s, UNVERIFIED_UID, [ExamRun(category="NOT TRIAGED", score=0.93, verified=False,
                                             not_triaged_reason="weights not verified")],
                 status="scored")
    return sqlite_db


def _token(db: Database, name: str, role: Role) -> dict[str, str]:
    with db.session() as s:
        return {"Authorization": f"Bearer {create_token(s, name, role).secret}"}


@pytest.fixture
def client(db: Database, settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings, db)) as c:
        yield c


@pytest.fixture
def admin(db: Database) -> dict[str, str]:
    return _token(db, "ops", Role.ADMIN)


@pytest.fixture
def viewer(db: Database) -> dict[str, str]:
    return _token(db, "rr1", Role.VIEWER)


def _client_with(db: Database, settings: Settings, **overrides: Any) -> TestClient:
    return TestClient(create_app(settings.model_copy(update=overrides), db))


def _paths(client: TestClient) -> list[str]:
    """Every documented path, and the schema's own."""
    return [*client.app.openapi()["paths"], "/openapi.json"]  # type: ignore[attr-defined]


# ---- tokens and roles ------------------------------------------------------------------

def test_no_endpoint_but_healthz_answers_without_a_valid_token(client: TestClient, db: Database) -> None:
    revoked = _token(db, "gone", Role.ADMIN)
    with db.session() as s:
        revoke_token(s, "gone")
    paths = [p.replace("{study_uid}", EXAM_UID) for p in _paths(client)
             if p not in OPEN_PATHS and not p.startswith("/dashboard")]
    assert {"/api/v1/worklist", "/api/v1/scores/history", "/api/v1/models", "/api/v1/audit",
            "/openapi.json"} <= set(paths)
    for path in [*paths, "/no/such/path"]:
        for headers in ({}, {"Authorization": "Bearer trg_wrong_wrong_wrong_wrong_wrong"},
                        {"Authorization": "Basic b3BzOm9wcw=="}, revoked):
            response = client.get(path, headers=headers)
            assert response.status_code == 401, (path, headers, response.text)
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert "triage tokens create" in response.json()["message"]


def test_healthz_answers_without_a_token(client: TestClient) -> None:
    if "/healthz" not in _paths(client):
        pytest.skip("triage/api/health.py (another part of issue 13) is not in this tree yet")
    assert client.get("/healthz").status_code == 200


def test_viewer_token_is_refused_on_admin_endpoints_and_admin_token_is_not(
        client: TestClient, viewer: dict[str, str], admin: dict[str, str]) -> None:
    refused = client.get("/api/v1/audit", headers=viewer)
    assert refused.status_code == 403
    assert "'rr1' has the viewer role" in refused.json()["message"]
    assert client.get("/api/v1/audit", headers=admin).status_code == 200
    for path in ("/api/v1/worklist", "/api/v1/scores/history", f"/api/v1/exams/{EXAM_UID}"):
        assert client.get(path, headers=viewer).status_code == 200, path


# ---- validation and injection -----------------------------------------------------------

@pytest.mark.parametrize(("path", "field"), [
    ("/api/v1/scores/history?min_score=2", "min_score"),
    ("/api/v1/scores/history?max_score=-1", "max_score"),
    ("/api/v1/scores/history?min_score=0.8&max_score=0.2", "max_score"),
    ("/api/v1/scores/history?min_score=high", "min_score"),
    ("/api/v1/scores/history?since=yesterday", "since"),
    ("/api/v1/scores/history?since=2026-03-01T10:00:00", "since"),
    ("/api/v1/scores/history?since=2026-03-02T00:00:00Z&until=2026-03-01T00:00:00Z", "until"),
    ("/api/v1/scores/history?limit=0", "limit"),
    ("/api/v1/scores/history?limit=100000", "limit"),
    ("/api/v1/scores/history?cursor=garbage", "cursor"),
    ("/api/v1/scores/history?category=HIHG", "category"),
    ("/api/v1/scores/history?format=xml", "format"),
    ("/api/v1/scores/history?accession=" + "9" * 65, "accession"),
    ("/api/v1/worklist?status=lost", "status"),
    ("/api/v1/worklist?category=URGENT", "category"),
    ("/api/v1/worklist?cursor=garbage", "cursor"),
    ("/api/v1/worklist?since=2026-03-01T10:00:00", "since"),
    ("/api/v1/worklist?limit=501", "limit"),
    ("/api/v1/exams/not-a-uid", "study_uid"),
    ("/api/v1/audit?limit=0", "limit"),
    ("/api/v1/audit?cursor=garbage", "cursor"),
])
def test_bad_filter_gives_422_with_a_message_naming_the_field(
        client: TestClient, admin: dict[str, str], path: str, field: str) -> None:
    response = client.get(path, headers=admin)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["message"].startswith(f"{field}: ")
    assert body["errors"][0]["field"] == field


def test_injection_strings_in_filters_are_treated_as_data(
        client: TestClient, db: Database, settings: Settings, admin: dict[str, str]) -> None:
    with db.session() as s:
        studies = s.scalar(select(func.count()).select_from(Study))
    pid_client = _client_with(db, settings, api_show_patient_ids=True)
    for text in INJECTIONS:
        for name in ("accession", "model_set_version"):
            response = client.get("/api/v1/scores/history", params={name: text}, headers=admin)
            assert response.status_code == 200, response.text
            found = [r["study_instance_uid"] for r in response.json()["rows"]]
            assert found == (["1.3.1"] if (name, text) == ("accession", INJECTIONS[0]) else [])
        response = pid_client.get("/api/v1/scores/history", params={"patient_id": text},
                                  headers=admin)
        found = [r["study_instance_uid"] for r in response.json()["rows"]]
        assert found == (["1.3.1"] if text == INJECTIONS[1] else []), text
        # refused as a category and as a UID (not what they look like), never run
        assert client.get("/api/v1/scores/history", params={"category": text},
                          headers=admin).status_code == 422
        assert client.get(f"/api/v1/exams/{text}", headers=admin).status_code in (404, 422)
        assert client.get("/api/v1/worklist", params={"cursor": text},
                          headers=admin).status_code == 422
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Study)) == studies


# ---- history: paging, CSV, what each caller sees -------------------------------------

def test_history_pages_by_cursor_without_duplicates_or_gaps(client: TestClient,
                                                            admin: dict[str, str]) -> None:
    everything = client.get("/api/v1/scores/history", params={"limit": 1000}, headers=admin).json()
    assert not everything["has_more"]
    seen: list[str] = []
    params: dict[str, Any] = {"limit": 6}
    while True:
        page = client.get("/api/v1/scores/history", params=params, headers=admin).json()
        seen += [r["study_instance_uid"] + r["scored_at"] for r in page["rows"]]
        if not page["has_more"]:
            assert page["next_cursor"] is None
            break
        params["cursor"] = page["next_cursor"]
    assert seen == [r["study_instance_uid"] + r["scored_at"] for r in everything["rows"]]
    assert len(seen) == len(set(seen)) == 43


def test_history_csv_streams_every_matching_run_under_a_header(
        client: TestClient, viewer: dict[str, str]) -> None:
    response = client.get("/api/v1/scores/history",
                          params={"format": "csv", "limit": 5, "max_score": 0.2}, headers=viewer)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    records = list(csv.DictReader(io.StringIO(response.text)))
    assert len(records) == 21  # every run up to 0.2 (limit applies to JSON pages only)
    assert set(records[0]) >= {"study_instance_uid", "exam_score", "left_p_malignant",
                               "right_p_malignant", "scored_at", "verified", "partial"}
    assert "patient_id" not in records[0]
    assert all(float(r["exam_score"]) <= 0.2 for r in records)


def test_patient_ids_only_for_admin_tokens_when_the_setting_enables_it(
        db: Database, settings: Settings, admin: dict[str, str], viewer: dict[str, str]) -> None:
    off = _client_with(db, settings)
    on = _client_with(db, settings, api_show_patient_ids=True)
    filtered = {"patient_id": "P1.2.3"}
    for app_client, headers, allowed in ((off, admin, False), (on, viewer, False),
                                         (on, admin, True)):
        rows = app_client.get("/api/v1/scores/history", headers=headers).json()["rows"]
        assert ("patient_id" in rows[0]) is allowed
        exam = app_client.get(f"/api/v1/exams/{EXAM_UID}", headers=headers)
        assert (PATIENT_ID in exam.text) is allowed
        assert "patient_name" not in exam.text.lower() and "patientname" not in exam.text.lower()
        response = app_client.get("/api/v1/scores/history", params=filtered, headers=headers)
        if allowed:
            assert [r["patient_id"] for r in response.json()["rows"]] == ["P1.2.3"]
        else:
            assert response.status_code == 403
            assert "TRIAGE_API_SHOW_PATIENT_IDS" in response.json()["message"]


def test_viewers_do_not_see_scores_of_unverified_runs(
        client: TestClient, admin: dict[str, str], viewer: dict[str, str]) -> None:
    def worklist_score(headers: dict[str, str]) -> float | None:
        entries = client.get("/api/v1/worklist", headers=headers).json()["entries"]
        return next(e["score"] for e in entries if e["study_instance_uid"] == UNVERIFIED_UID)

    assert worklist_score(admin) == 0.93 and worklist_score(viewer) is None

    def run_score(headers: dict[str, str]) -> float | None:
        exam = client.get(f"/api/v1/exams/{UNVERIFIED_UID}", headers=headers).json()
        scores = [s["p_malignant"] for s in exam["runs"][0]["scores"]]
        assert scores and (all(v is None for v in scores) or all(v is not None for v in scores))
        return exam["runs"][0]["exam_score"]  # type: ignore[no-any-return]

    assert run_score(admin) == 0.93 and run_score(viewer) is None
    history = client.get("/api/v1/scores/history", params={"category": "NOT TRIAGED"},
                         headers=viewer).json()["rows"]
    assert history and all(r["exam_score"] is None for r in history)


# ---- exams, models, audit -----------------------------------------------------------

def test_exam_endpoint_returns_the_exam_detail_or_404(client: TestClient, viewer: dict[str, str]) -> None:
    exam = client.get(f"/api/v1/exams/{EXAM_UID}", headers=viewer)
    assert exam.status_code == 200
    body = exam.json()
    assert body["study_instance_uid"] == EXAM_UID and body["runs"][0]["category"] == "HIGH"
    assert {"instances", "status_history", "runs", "audit_events"} <= set(body)
    missing = client.get("/api/v1/exams/1.2.3.4", headers=viewer)
    assert missing.status_code == 404 and "GET /api/v1/worklist" in missing.json()["message"]


def test_models_endpoint_lists_names_versions_weights_status_and_intended_use(
        client: TestClient, viewer: dict[str, str]) -> None:
    models = {m["name"]: m for m in client.get("/api/v1/models", headers=viewer).json()}
    member = models["gmic-resnet18-1"]
    assert member["version"] and member["weights_status"] == "random"
    assert member["sha256"] is None and member["ensemble_weight"] == 0.2
    assert "Not a diagnosis" in member["intended_use"]


def test_history_and_exam_queries_are_written_to_the_audit(
        client: TestClient, db: Database, admin: dict[str, str], viewer: dict[str, str]) -> None:
    client.get("/api/v1/scores/history", params={"model_set_version": "ms-1", "limit": 3},
               headers=viewer)
    client.get("/api/v1/scores/history", params={"format": "csv", "accession": "A1.2.7"},
               headers=viewer)
    client.get(f"/api/v1/exams/{EXAM_UID}", headers=viewer)
    client.get("/api/v1/exams/1.2.3.4", headers=admin)
    client.get("/api/v1/worklist", headers=viewer)  # the worklist is not a history query
    client.get("/api/v1/scores/history", params={"min_score": 7}, headers=viewer)  # refused
    entries = client.get("/api/v1/audit", headers=admin).json()["entries"]
    assert [(e["who"], e["query"], e["rows"]) for e in entries] == [
        ("ops", "exams.detail", 0), ("rr1", "exams.detail", 1),
        ("rr1", "scores.history", 1), ("rr1", "scores.history", 3)]
    assert entries[3]["filters"] == {"model_set_version": "ms-1", "limit": 3}
    assert entries[2]["filters"] == {"accession": "A1.2.7", "format": "csv"}
    assert entries[1]["filters"] == {"study_instance_uid": EXAM_UID}
    assert all(e["channel"] == "api" and e["at"] for e in entries)
    only_ops = client.get("/api/v1/audit", params={"who": "ops"}, headers=admin).json()
    assert [e["who"] for e in only_ops["entries"]] == ["ops"]
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(QueryAudit)) == 4


# ---- OpenAPI ---------------------------------------------------------------------------

def test_openapi_schema_documents_paths_the_bearer_scheme_and_the_422_body(
        client: TestClient, viewer: dict[str, str]) -> None:
    schema = client.get("/openapi.json", headers=viewer).json()
    paths = schema["paths"]
    assert {"/api/v1/worklist", "/api/v1/exams/{study_uid}", "/api/v1/scores/history",
            "/api/v1/models", "/api/v1/audit"} <= set(paths)
    assert schema["components"]["securitySchemes"]["bearerToken"] == {
        "type": "http", "scheme": "bearer",
        "description": "an API token from `triage tokens create` (viewer or admin)"}
    assert schema["security"] == [{"bearerToken": []}]
    if "/healthz" in paths:
        assert paths["/healthz"]["get"]["security"] == []
    problem = schema["components"]["schemas"]["ValidationProblem"]
    assert set(problem["properties"]) == {"message", "errors"}
    assert set(schema["components"]["schemas"]["FieldProblem"]["properties"]) == {
        "field", "location", "message"}
    history = paths["/api/v1/scores/history"]["get"]
    assert history["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/ValidationProblem")
    assert "401" in history["responses"] and "text/csv" in history["responses"]["200"]["content"]
    assert "403" in paths["/api/v1/audit"]["get"]["responses"]
    assert {p["name"] for p in history["parameters"]} >= {
        "since", "until", "accession", "patient_id", "model_set_version", "category",
        "min_score", "max_score", "limit", "cursor", "format"}
    assert "HTTPValidationError" not in schema["components"]["schemas"]
