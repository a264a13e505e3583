"""GET /healthz, /readyz and /metrics on a small app holding only those routers, with a real
SQLite database made by the migrations (no token here: the product app's middleware adds it).
The readiness check against a real archive (Orthanc up, then down) is in
tests/integration/test_readyz_archive.py."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import event

from tests.servers import free_port
from triage.api import health, metrics
from triage.config import Settings, load_settings
from triage.db import (
    Database,
    Instance,
    OutboxItem,
    Quarantined,
    ScoringRun,
    Study,
    create_database,
)
from triage.db.models import utcnow


def make_client(settings: Settings, db: Database) -> TestClient:
    app = FastAPI()
    app.state.settings, app.state.db = settings, db
    app.include_router(health.router)
    app.include_router(metrics.router)
    return TestClient(app)


@pytest.fixture
def client(settings: Settings, sqlite_db: Database) -> TestClient:
    return make_client(settings, sqlite_db)


def with_settings(settings: Settings, **changes: object) -> Settings:
    return load_settings(data_dir=settings.data_dir, **changes)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of a Prometheus text exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def add_exam(session, uid: str, status: str, *, instances: int = 0, image_class: str = "ffdm",
             size: int = 1000) -> Study:
    study = Study(grouping_key=f"uid:{uid}", study_instance_uid=uid, status=status)
    session.add(study)
    session.flush()
    for i in range(instances):
        session.add(Instance(study_id=study.id, sop_instance_uid=f"{uid}.{i}",
                             sop_class_uid="1.2.840.10008.5.1.4.1.1.1.2", image_class=image_class,
                             path=f"/spool/{uid}.{i}.dcm", content_digest=f"{i:064d}",
                             size_bytes=size))
    return study


_digests = itertools.count()


def add_run(session, study: Study, timings: dict[str, float], *, finished_ago: timedelta,
            status: str = "succeeded") -> None:
    session.add(ScoringRun(study_id=study.id, model_set_version="set-1",
                           instances_digest=f"{next(_digests):064d}",
                           status=status, timings=timings,
                           finished_at=utcnow() - finished_ago))


def add_outbox(session, study: Study, n: int, *, status: str, destination: str,
               created_ago: timedelta = timedelta(0)) -> None:
    for i in range(n):
        session.add(OutboxItem(study_id=study.id, kind="sr_tid1500", sop_class_uid="1.2.3",
                               sop_instance_uid=f"{study.study_instance_uid}.9{status}{i}",
                               transfer_syntax_uid="1.2.840.10008.1.2.1", path="/out/x.dcm",
                               destination=destination, status=status,
                               created_at=utcnow() - created_ago))


# ---- /healthz ------------------------------------------------------------------------------

def test_healthz_answers_alive_even_when_the_database_is_unreachable(
    settings: Settings, tmp_path: Path
) -> None:
    broken = create_database(f"sqlite:///{tmp_path / 'missing-dir' / 'triage.db'}")
    response = make_client(settings, broken).get("/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "alive" and response.json()["version"]


# ---- /readyz -------------------------------------------------------------------------------

def test_readyz_is_ready_with_the_database_and_the_local_outputs_folder(client: TestClient) -> None:
    response = client.get("/readyz")
    body = response.json()
    assert response.status_code == 200, body
    assert body["status"] == "ready"
    assert set(body["checks"]) == {"database", "spool_disk", "archive"}
    assert all(check["ok"] for check in body["checks"].values())
    assert "no archive configured" in body["checks"]["archive"]["detail"]
    assert "MiB free" in body["checks"]["spool_disk"]["detail"]


def test_readyz_fails_when_the_spool_has_less_free_space_than_the_setting(
    settings: Settings, sqlite_db: Database
) -> None:
    greedy = with_settings(settings, min_free_spool_mb=1e12)  # an exabyte
    response = make_client(greedy, sqlite_db).get("/readyz")
    assert response.status_code == 503
    check = response.json()["checks"]["spool_disk"]
    assert not check["ok"] and "TRIAGE_MIN_FREE_SPOOL_MB" in check["detail"]
    assert response.json()["checks"]["database"]["ok"]


def test_readyz_says_to_upgrade_a_database_without_the_schema(
    settings: Settings, tmp_path: Path
) -> None:
    empty = create_database(f"sqlite:///{tmp_path / 'empty.db'}")
    response = make_client(settings, empty).get("/readyz")
    assert response.status_code == 503
    check = response.json()["checks"]["database"]
    assert not check["ok"] and "triage db upgrade" in check["detail"]


def test_readyz_fails_on_an_unreachable_database_naming_the_setting(
    settings: Settings, tmp_path: Path
) -> None:
    broken = create_database(f"sqlite:///{tmp_path / 'missing-dir' / 'triage.db'}")
    response = make_client(settings, broken).get("/readyz")
    assert response.status_code == 503
    assert "TRIAGE_DATABASE_URL" in response.json()["checks"]["database"]["detail"]


def test_readyz_checks_the_broker_only_when_one_is_configured(
    settings: Settings, sqlite_db: Database
) -> None:
    dead = with_settings(settings, broker_url=f"redis://127.0.0.1:{free_port()}/0")
    response = make_client(dead, sqlite_db).get("/readyz")
    assert response.status_code == 503
    broker = response.json()["checks"]["broker"]
    assert not broker["ok"] and broker["seconds"] < 10
    memory = with_settings(settings, broker_url="memory://")
    response = make_client(memory, sqlite_db).get("/readyz")
    assert response.status_code == 200 and response.json()["checks"]["broker"]["ok"]


def test_readyz_echoes_every_destination_once_and_fails_on_one_that_does_not_answer(
    settings: Settings, sqlite_db: Database
) -> None:
    port = free_port()  # nothing listens there
    configured = with_settings(settings, archive=f"PACS@127.0.0.1:{port}",
                               archive_sr=f"PACS@127.0.0.1:{port}")
    response = make_client(configured, sqlite_db).get("/readyz")
    assert response.status_code == 503
    checks = response.json()["checks"]
    archive_checks = [name for name in checks if name.startswith("archive")]
    assert archive_checks == [f"archive PACS@127.0.0.1:{port}"]
    assert "C-ECHO" in checks[archive_checks[0]]["detail"]


# ---- /metrics ------------------------------------------------------------------------------

@pytest.fixture
def populated(sqlite_db: Database) -> Database:
    with sqlite_db.session() as session:
        scored = add_exam(session, "1.2.3.1", "scored", instances=4, size=1000)
        add_exam(session, "1.2.3.2", "ready", instances=2, image_class="dbt", size=5000)
        add_exam(session, "1.2.3.3", "queued")
        add_exam(session, "1.2.3.4", "queued")
        add_exam(session, "1.2.3.5", "failed")
        add_run(session, scored, {"model_gmic-a_s": 0.4, "model_gmic-b_s": 3.0, "total_s": 4.2},
                finished_ago=timedelta(minutes=5))
        add_run(session, scored, {"model_gmic-a_s": 0.2, "total_s": 0.9},
                finished_ago=timedelta(minutes=50))
        add_run(session, scored, {"model_gmic-a_s": 100.0, "total_s": 101.0},
                finished_ago=timedelta(days=3))  # outside the window
        add_run(session, scored, {"model_gmic-a_s": 50.0}, finished_ago=timedelta(minutes=1),
                status="failed")  # only succeeded runs are timed
        add_outbox(session, scored, 3, status="pending", destination="PACS@pacs:104",
                   created_ago=timedelta(minutes=10))
        add_outbox(session, scored, 2, status="failed", destination="VNA@vna:104")
        add_outbox(session, scored, 1, status="sent", destination="PACS@pacs:104")
        session.add(Quarantined(path="/q/x", reason="not DICOM", status_code=0xC000))
    return sqlite_db


def test_metrics_report_instances_exams_queue_outbox_and_spool_in_prometheus_text(
    settings: Settings, populated: Database
) -> None:
    response = make_client(settings, populated).get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    got = samples(response.text)
    assert got[("triage_database_up", ())] == 1
    assert got[("triage_instances_received_total", (("image_class", "ffdm"),))] == 4
    assert got[("triage_instances_received_total", (("image_class", "dbt"),))] == 2
    assert got[("triage_instances_quarantined_total", ())] == 1
    assert got[("triage_spool_stored_bytes", ())] == 4 * 1000 + 2 * 5000
    assert got[("triage_exams", (("status", "queued"),))] == 2
    assert got[("triage_exams", (("status", "delivered"),))] == 0  # every status is listed
    assert got[("triage_queue_depth", ())] == 3  # ready + queued
    assert got[("triage_outbox_backlog", (("destination", "PACS@pacs:104"),))] == 3
    assert got[("triage_outbox_failures", (("destination", "VNA@vna:104"),))] == 2
    assert 9 * 60 < got[("triage_outbox_oldest_pending_seconds", ())] < 60 * 60
    assert got[("triage_spool_filesystem_free_bytes", ())] > 0


def test_metrics_scoring_time_histogram_per_member_covers_recent_succeeded_runs(
    settings: Settings, populated: Database
) -> None:
    got = samples(make_client(settings, populated).get("/metrics").text)

    def bucket(name: str, le: str, **labels: str) -> float:
        return got[(name + "_bucket", tuple(sorted({"le": le, **labels}.items())))]

    assert bucket("triage_scoring_seconds", "+Inf", member="gmic-a") == 2
    assert bucket("triage_scoring_seconds", "0.25", member="gmic-a") == 1
    assert bucket("triage_scoring_seconds", "0.5", member="gmic-a") == 2
    assert got[("triage_scoring_seconds_gsum", (("member", "gmic-a"),))] == pytest.approx(0.6)
    assert bucket("triage_scoring_seconds", "2.5", member="gmic-b") == 0
    assert bucket("triage_scoring_seconds", "5", member="gmic-b") == 1
    assert bucket("triage_exam_scoring_seconds", "+Inf") == 2
    assert got[("triage_exam_scoring_seconds_gsum", ())] == pytest.approx(5.1)


def test_member_timings_reads_model_keys_and_groups_of_members_sharing_an_input() -> None:
    runs = [{"model_gmic3d-1+gmic3d-2_s": 8.0, "decode_preprocess_s": 1.0, "total_s": 9.0},
            {"model_dmv-cnn-image-only_s": 2.0, "model_x_s": "not a number"}]
    assert metrics.member_timings(runs) == {"gmic3d-1+gmic3d-2": [8.0],
                                            "dmv-cnn-image-only": [2.0]}


def test_metrics_with_the_database_down_still_answer_with_database_up_zero(
    settings: Settings, tmp_path: Path
) -> None:
    broken = create_database(f"sqlite:///{tmp_path / 'missing-dir' / 'triage.db'}")
    response = make_client(settings, broken).get("/metrics")
    assert response.status_code == 200
    got = samples(response.text)
    assert got[("triage_database_up", ())] == 0
    assert ("triage_queue_depth", ()) not in got
    assert got[("triage_spool_filesystem_size_bytes", ())] > 0


@pytest.fixture
def statements(sqlite_db: Database) -> Iterator[list[str]]:
    seen: list[str] = []

    def count(_conn, _cursor, statement, *_args) -> None:
        seen.append(statement)

    event.listen(sqlite_db.engine, "before_cursor_execute", count)
    yield seen
    event.remove(sqlite_db.engine, "before_cursor_execute", count)


def test_a_scrape_runs_the_same_number_of_statements_however_many_rows(
    settings: Settings, sqlite_db: Database, statements: list[str]
) -> None:
    client = make_client(settings, sqlite_db)
    client.get("/metrics")
    empty = len(statements)
    with sqlite_db.session() as session:
        for i in range(30):
            study = add_exam(session, f"1.2.4.{i}", "scored", instances=2)
            add_run(session, study, {"model_m_s": 1.0, "total_s": 2.0},
                    finished_ago=timedelta(minutes=i))
            add_outbox(session, study, 2, status="pending", destination=f"D{i % 3}@h:104")
    statements.clear()
    got = samples(client.get("/metrics").text)
    assert len(statements) == empty
    assert got[("triage_scoring_seconds_bucket", (("le", "+Inf"), ("member", "m")))] == 30
