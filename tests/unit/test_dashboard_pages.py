"""The dashboard through the API application (TestClient on the real app factory and a
migrated SQLite DB): login with a token, what each page shows, and what a viewer may not
see or do. The same pages are driven in a real browser by tests/e2e/test_dashboard_browser.py."""

from __future__ import annotations

from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.exam_detail_rows import PATIENT_ID, VNA, RunSpec, add_exam
from triage.api.app import create_app
from triage.config import Settings
from triage.db import Database, OutboxItem
from triage.db.access import Role
from triage.db.models import QueryAudit, utcnow
from triage.db.tokens import create_token

UID = "1.2.826.0.1.3680043.8.498.42"


@pytest.fixture
def client(sqlite_db: Database, settings: Settings) -> TestClient:
    now = utcnow()
    with sqlite_db.session() as session:
        add_exam(session, UID, [RunSpec(category="HIGH", score=0.71)], received=now - timedelta(hours=1))
        add_exam(session, UID + ".7", [RunSpec(category="NOT TRIAGED", score=0.93, verified=False,
                                               not_triaged_reason="weights not verified",
                                               partial=True, coverage_gaps=("L-MLO not scored",))],
                 status="scored", received=now - timedelta(minutes=30))
    return TestClient(create_app(settings, sqlite_db))


def _login(client: TestClient, db: Database, role: Role, name: str) -> None:
    with db.session() as session:
        secret = create_token(session, name, role).secret
    response = client.post("/dashboard/login", data={"token": secret}, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/dashboard/worklist"
    client.cookies.set("triage_session", response.cookies["triage_session"])


def test_pages_need_a_login_and_a_wrong_token_is_refused(client: TestClient) -> None:
    for page in ("/dashboard/worklist", "/dashboard/history", "/dashboard/system",
                 f"/dashboard/exams/{UID}"):
        response = client.get(page, follow_redirects=False)
        assert response.status_code == 303 and response.headers["location"] == "/dashboard/login"
    refused = client.post("/dashboard/login", data={"token": "trg_nope"})
    assert "Unknown or revoked token" in refused.text
    assert client.get("/api/v1/worklist").status_code == 401  # the API still needs a bearer


def test_worklist_shows_priority_colour_coverage_and_hides_unverified_scores_from_viewers(
    client: TestClient, sqlite_db: Database
) -> None:
    _login(client, sqlite_db, Role.VIEWER, "reading-room")
    page = client.get("/dashboard/worklist").text
    assert 'http-equiv="refresh"' in page
    assert 'class="cat cat-HIGH">HIGH' in page and "0.710" in page
    assert 'class="cat cat-NOT-TRIAGED">NOT TRIAGED' in page and "PARTIAL" in page
    assert "0.930" not in page and "(admins only)" in page
    assert PATIENT_ID not in page


def test_exam_page_shows_members_breasts_and_delivery_and_only_admins_retry(
    client: TestClient, sqlite_db: Database
) -> None:
    _login(client, sqlite_db, Role.VIEWER, "viewer-1")
    page = client.get(f"/dashboard/exams/{UID}").text
    assert "gmic-resnet18-1" in page and "dmv-cnn-image-only" in page
    assert 'id="breasts"' in page and "0.350" in page  # ensemble breast score
    assert VNA in page and "0xA900 SOP class not supported" in page
    assert 'id="retry"' not in page
    assert client.post(f"/dashboard/exams/{UID}/retry", data={"reason": "x"}).status_code == 403
    _login(client, sqlite_db, Role.ADMIN, "admin-1")
    page = client.get(f"/dashboard/exams/{UID}").text
    assert 'id="retry"' in page
    done = client.post(f"/dashboard/exams/{UID}/retry", data={"reason": "VNA fixed"})
    assert "Queued 1 objects again" in done.text
    with sqlite_db.session() as session:
        statuses = {r.destination: r.status for r in session.scalars(select(OutboxItem))
                    if r.kind == "sr_tid1500" and r.sop_instance_uid.startswith(UID + ".500")}
        assert statuses[VNA] == "pending"
        audited = session.scalars(select(QueryAudit).where(QueryAudit.channel == "dashboard")).all()
        assert {a.query for a in audited} == {"dashboard exam"} and len(audited) >= 2


def test_history_and_system_pages_show_the_plots_drift_and_operations(
    client: TestClient, sqlite_db: Database
) -> None:
    _login(client, sqlite_db, Role.ADMIN, "admin-2")
    history = client.get("/dashboard/history").text
    assert "<svg" in history and 'id="drift"' in history and "reference period" in history
    assert "exam score per model-set version" in history
    system = client.get("/dashboard/system").text
    assert 'id="queue-depth"' in system and "Nothing waiting." not in system
    assert VNA in system  # a refused object is a backlog and a recent failure
    assert "delivery refused" in system
    assert "gmic-resnet18-1" in system  # the configured members with their weights status
