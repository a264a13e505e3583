"""GET /metrics and /readyz on PostgreSQL: the collector's aggregate statements (counts,
sums, the JSON timings of recent runs) run there as on SQLite."""

from __future__ import annotations

from datetime import timedelta

from tests.unit.test_health_metrics import add_exam, add_outbox, add_run, make_client, samples
from triage.config import Settings, load_settings
from triage.db import create_database
from triage.db.migrate import upgrade


def test_metrics_and_readiness_read_a_postgresql_database(
    settings: Settings, postgres_url: str
) -> None:
    upgrade(postgres_url)
    db = create_database(postgres_url)
    with db.session() as session:
        study = add_exam(session, "1.2.5.1", "scored", instances=4, size=2048)
        add_exam(session, "1.2.5.2", "ready")
        add_run(session, study, {"model_gmic-a_s": 1.5, "total_s": 3.0},
                finished_ago=timedelta(minutes=3))
        add_outbox(session, study, 2, status="pending", destination="PACS@pacs:104")
    configured = load_settings(data_dir=settings.data_dir, database_url=postgres_url)
    client = make_client(configured, db)
    got = samples(client.get("/metrics").text)
    assert got[("triage_database_up", ())] == 1
    assert got[("triage_instances_received_total", (("image_class", "ffdm"),))] == 4
    assert got[("triage_spool_stored_bytes", ())] == 4 * 2048
    assert got[("triage_queue_depth", ())] == 1
    assert got[("triage_outbox_backlog", (("destination", "PACS@pacs:104"),))] == 2
    assert got[("triage_scoring_seconds_bucket", (("le", "2.5"), ("member", "gmic-a")))] == 1
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["database"]["ok"]
    db.dispose()
