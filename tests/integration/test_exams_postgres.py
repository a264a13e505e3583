"""exam_detail and list_exams on a real PostgreSQL server: the same answers as on SQLite (the
accession filter reads a JSON column as text), in the same bounded number of statements."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest

from tests.exam_detail_rows import PACS, T0, VNA, RunSpec, add_exam
from tests.unit.test_worklist_queries import statements_during
from triage.db import Database, create_database
from triage.db.exam_detail import exam_detail
from triage.db.migrate import upgrade
from triage.db.queries import list_exams


@pytest.fixture
def pg(postgres_url: str) -> Iterator[Database]:
    upgrade(postgres_url)
    db = create_database(postgres_url)
    yield db
    db.dispose()


def test_exam_detail_on_postgresql_in_one_statement_per_table(pg: Database) -> None:
    with pg.session() as s:
        add_exam(s, "1.one", [RunSpec()])
        add_exam(s, "1.many", [RunSpec(model_set=f"ms-{k}", minutes=k) for k in range(20)])

    def read(uid: str) -> None:
        with pg.session() as session:
            exam_detail(session, uid)

    assert statements_during(pg, lambda: read("1.one")) == statements_during(
        pg, lambda: read("1.many")) <= 8
    with pg.session() as session:
        detail = exam_detail(session, "1.many")
    assert detail is not None and len(detail.runs) == 20 and detail.runs[-1].latest
    sr = detail.runs[0].outputs[0]
    assert [(d.destination, d.status) for d in sr.deliveries] == [(PACS, "sent"), (VNA, "failed")]
    assert detail.patient_id is None and detail.timezone_offset is None


def test_list_exams_filters_on_postgresql(pg: Database) -> None:
    with pg.session() as s:
        add_exam(s, "2.a", [RunSpec(model_set="ms-a", category="HIGH")], accession="ACC_1",
                 received=T0)
        add_exam(s, "2.b", [RunSpec(model_set="ms-b", category="ROUTINE"),
                            RunSpec(model_set="ms-a", category="MEDIUM", minutes=30)],
                 accession="ACC-2", received=T0 - timedelta(days=2))

    def uids(**filters: object) -> list[str]:
        with pg.session() as session:
            return [e.study_instance_uid for e in list_exams(session, **filters).exams]  # type: ignore[arg-type]

    assert uids() == ["2.a", "2.b"]
    assert uids(accession="ACC_1") == ["2.a"] and uids(accession="ACC%") == []
    assert uids(accession="ACC-1") == []  # _ is no wildcard the other way either
    assert uids(model_set="ms-b") == ["2.b"] and uids(model_set="ms-a") == ["2.a", "2.b"]
    assert uids(category="MEDIUM") == ["2.b"] and uids(category="ROUTINE") == []
    assert uids(since=T0 - timedelta(days=1)) == ["2.a"]
    with pg.session() as session:
        page = list_exams(session, limit=1)
    assert page.truncated and page.total == 2 and page.exams[0].views == [
        "L-CC", "L-MLO", "R-CC", "R-MLO"]
