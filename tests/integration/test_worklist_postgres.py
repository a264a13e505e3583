"""queries.worklist on a real PostgreSQL server: the same SQL, the same pages as on SQLite,
in the same bounded number of statements."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from datetime import timedelta

import pytest

from tests.unit.test_worklist_queries import (
    NOW,
    add_exams,
    by_uid,
    expected_order,
    many_exams,
    mixed_exams,
    read,
    statements_during,
    uids,
    walk,
)
from triage.db import Database, create_database
from triage.db.migrate import upgrade
from triage.db.queries import WorklistRequest


@pytest.fixture
def pg(postgres_url: str) -> Iterator[Database]:
    upgrade(postgres_url)
    db = create_database(postgres_url)
    yield db
    db.dispose()


def test_worklist_on_postgresql_orders_filters_and_pages_like_sqlite(pg: Database) -> None:
    with pg.session() as s:
        add_exams(s, mixed_exams())
    page = read(pg)
    assert uids(page) == ["high.new", "high.old", "medium", "routine", "partial",
                          "receiving", "unverified", "skipped", "failed"]
    entries = by_uid(page)
    assert entries["partial"].partial and not entries["high.new"].partial  # JSON field read
    assert entries["failed"].reason == "scoring failed: decode error"
    assert uids(read(pg, WorklistRequest(status="scored", category="NOT TRIAGED"))) == ["unverified"]

    exams = many_exams(3000, prefix="big")
    with pg.session() as s:
        add_exams(s, exams)
    small = mixed_exams()
    expected = expected_order([*small, *exams], NOW - timedelta(hours=24))
    for by_cursor in (True, False):
        pages = walk(pg, WorklistRequest(limit=500), by_cursor=by_cursor)
        seen = [uid for p in pages for uid in uids(p)]
        assert seen == expected
        assert pages[0].total == len(seen)

    first = read(pg, WorklistRequest(limit=7))
    assert first.next_cursor is not None
    for request in (WorklistRequest(), WorklistRequest(category="NOT TRIAGED", status="scored"),
                    WorklistRequest(limit=7, cursor=first.next_cursor)):
        assert statements_during(pg, functools.partial(read, pg, request)) == 2
