"""GET /readyz against a real archive: Orthanc answering C-ECHO (ready), then stopped (503,
naming the destination), and a real Redis as the broker."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.servers import OrthancServer, RedisServer
from triage.api import health
from triage.config import Settings, load_settings
from triage.db import Database


def client_for(settings: Settings, db: Database) -> TestClient:
    app = FastAPI()
    app.state.settings, app.state.db = settings, db
    app.include_router(health.router)
    return TestClient(app)


def test_readyz_is_ready_while_orthanc_answers_c_echo_and_not_once_it_stops(
    settings: Settings, sqlite_db: Database, orthanc: OrthancServer
) -> None:
    destination = f"{orthanc.ae_title}@127.0.0.1:{orthanc.dicom_port}"
    client = client_for(load_settings(data_dir=settings.data_dir, archive=destination), sqlite_db)
    up = client.get("/readyz")
    assert up.status_code == 200, up.json()
    check = up.json()["checks"][f"archive {destination}"]
    assert check["ok"] and "C-ECHO answered" in check["detail"]

    orthanc.stop()
    down = client.get("/readyz")
    assert down.status_code == 503
    body = down.json()
    assert body["status"] == "not ready"
    failed = body["checks"][f"archive {destination}"]
    assert not failed["ok"] and destination in failed["detail"]
    assert failed["seconds"] < 10
    assert body["checks"]["database"]["ok"] and body["checks"]["spool_disk"]["ok"]


def test_readyz_reaches_a_real_redis_broker(
    settings: Settings, sqlite_db: Database, redis_server: RedisServer
) -> None:
    configured = load_settings(data_dir=settings.data_dir, broker_url=redis_server.url)
    response = client_for(configured, sqlite_db).get("/readyz")
    assert response.status_code == 200, response.json()
    assert response.json()["checks"]["broker"]["ok"]
