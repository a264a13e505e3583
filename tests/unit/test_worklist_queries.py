"""queries.worklist: which exams, in which order, a page at a time, in a bounded number of
SQL statements (the same function the CLI and the HTTP API call)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, insert
from sqlalchemy.orm import Session

from triage.db import Database, ScoringRun, Study
from triage.db.queries import (
    InvalidWorklistRequest,
    WorklistEntry,
    WorklistPage,
    WorklistRequest,
    category_order,
    worklist,
)

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
PRIORITIES = ["HIGH", "MEDIUM", "ROUTINE"]
RESULT_STATES = ("scored", "delivered")


@dataclass
class Run:
    category: str | None = None
    score: float | None = None
    status: str = "succeeded"
    reason: str | None = None
    partial: bool = False
    model_set: str = "ms-1"
    minutes_after_arrival: int = 5


@dataclass
class Exam:
    uid: str
    status: str
    age_minutes: int  # arrival, minutes before NOW
    runs: list[Run] = field(default_factory=list)  # oldest first
    partial: bool = False
    skip: str | None = None
    failure: str | None = None
    hold: str | None = None
    delivered_age_minutes: int | None = None  # default: 10 minutes after arrival

    @property
    def received(self) -> datetime:
        return NOW - timedelta(minutes=self.age_minutes)


def add_exams(session: Session, exams: list[Exam]) -> None:
    """Insert studies and their runs in bulk (two executemany INSERTs)."""
    first_id = (session.query(Study.id).order_by(Study.id.desc()).limit(1).scalar() or 0) + 1
    studies: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    for n, e in enumerate(exams):
        sid = first_id + n
        delivered = None
        if e.status == "delivered":
            delivered = (NOW - timedelta(minutes=e.delivered_age_minutes)
                         if e.delivered_age_minutes is not None else e.received + timedelta(minutes=10))
        studies.append({
            "id": sid, "grouping_key": e.uid, "study_instance_uid": e.uid,
            "accession_numbers": [f"A{e.uid}"], "patient_id": f"P{sid}", "status": e.status,
            "partial": e.partial, "skip_reason": e.skip, "failure_reason": e.failure,
            "hold_reason": e.hold,
            "first_received_at": e.received, "last_received_at": e.received + timedelta(minutes=1),
            "scored_at": e.received + timedelta(minutes=6) if e.status in RESULT_STATES else None,
            "delivered_at": delivered,
        })
        for k, r in enumerate(e.runs):
            runs.append({
                "study_id": sid, "model_set_version": r.model_set, "instances_digest": f"{e.uid}-{k}",
                "status": r.status, "category": r.category, "exam_score": r.score,
                "not_triaged_reason": r.reason, "partial": r.partial,
                "started_at": e.received + timedelta(minutes=r.minutes_after_arrival + k),
            })
    session.execute(insert(Study), studies)
    if runs:
        session.execute(insert(ScoringRun), runs)


def read(db: Database, request: WorklistRequest | None = None,
         priorities: list[str] | None = None) -> WorklistPage:
    with db.session() as session:
        return worklist(session, priorities or PRIORITIES, request, now=NOW)


def uids(page: WorklistPage) -> list[str]:
    return [e.study_instance_uid for e in page.entries]


def by_uid(page: WorklistPage) -> dict[str, WorklistEntry]:
    return {e.study_instance_uid: e for e in page.entries}


@pytest.fixture
def db(sqlite_db: Database) -> Iterator[Database]:
    yield sqlite_db


def statements_during(db: Database, action: Callable[[], object]) -> int:
    count = 0

    def before_cursor_execute(*_args: object) -> None:
        nonlocal count
        count += 1

    event.listen(db.engine, "before_cursor_execute", before_cursor_execute)
    try:
        action()
    finally:
        event.remove(db.engine, "before_cursor_execute", before_cursor_execute)
    return count


# ---- order ---------------------------------------------------------------------------

def mixed_exams() -> list[Exam]:
    return [
        Exam("high.old", "delivered", 120, [Run("HIGH", 0.8)], delivered_age_minutes=100),
        Exam("high.new", "scored", 30, [Run("HIGH", 0.6)]),
        Exam("medium", "delivered", 10, [Run("MEDIUM", 0.3)], delivered_age_minutes=2),
        Exam("routine", "scored", 200, [Run("ROUTINE", 0.05)]),
        Exam("partial", "scored", 40, [Run("PARTIAL", 0.4, reason="right MLO missing", partial=True)]),
        Exam("unverified", "scored", 50, [Run("NOT TRIAGED", 0.9, reason="weights not verified")]),
        Exam("receiving", "receiving", 1),
        Exam("failed", "failed", 300, [Run(status="failed")], failure="decode error"),
        Exam("skipped", "skipped", 60, skip="not a screening procedure"),
    ]


def test_categories_follow_configured_priorities_then_partial_then_not_triaged_newest_first(
        db: Database) -> None:
    with db.session() as s:
        add_exams(s, mixed_exams())
    page = read(db)
    assert uids(page) == ["high.new", "high.old", "medium", "routine", "partial",
                          "receiving", "unverified", "skipped", "failed"]
    assert [e.category for e in page.entries] == [
        "HIGH", "HIGH", "MEDIUM", "ROUTINE", "PARTIAL", *["NOT TRIAGED"] * 4]
    # the configured order, not the alphabet or the score, decides
    reordered = read(db, priorities=["ROUTINE", "MEDIUM", "HIGH"])
    assert uids(reordered)[:4] == ["routine", "medium", "high.new", "high.old"]
    assert category_order(["HIGH", "LOW"]) == ("HIGH", "LOW", "PARTIAL", "NOT TRIAGED")


def test_not_triaged_entries_say_why(db: Database) -> None:
    with db.session() as s:
        add_exams(s, mixed_exams())
    entries = by_uid(read(db))
    assert entries["unverified"].reason == "weights not verified"
    assert entries["unverified"].score == 0.9  # shown to admins, not used for the order
    assert entries["partial"].reason == "right MLO missing"
    assert entries["receiving"].reason == "not scored yet (receiving)"
    assert entries["skipped"].reason == "skipped: not a screening procedure"
    assert entries["failed"].reason == "scoring failed: decode error"
    assert entries["failed"].score is None
    assert entries["high.new"].reason is None


def test_a_held_exam_is_listed_with_the_reason_an_admin_acts_on(db: Database) -> None:
    with db.session() as s:
        add_exams(s, [Exam("held", "held", 500, [Run("HIGH", 0.9)],
                           hold="patient identity conflict: run triage exams release")])
    entry = by_uid(read(db))["held"]
    assert entry.category == "NOT TRIAGED" and entry.score is None
    assert entry.reason == "held for an admin: patient identity conflict: run triage exams release"


def test_latest_run_decides_the_category(db: Database) -> None:
    with db.session() as s:
        add_exams(s, [
            Exam("rescored", "scored", 10, [Run("HIGH", 0.9, model_set="ms-1"),
                                            Run("ROUTINE", 0.1, model_set="ms-2")]),
            Exam("rescore.failed", "failed", 20, [Run("HIGH", 0.9), Run(status="failed")],
                 failure="worker lost three times"),
            Exam("reopened", "receiving", 30, [Run("HIGH", 0.7)]),
        ])
    entries = by_uid(read(db))
    assert entries["rescored"].category == "ROUTINE"
    assert entries["rescored"].score == 0.1 and entries["rescored"].model_set_version == "ms-2"
    assert entries["rescore.failed"].category == "NOT TRIAGED"
    assert entries["rescore.failed"].reason == "scoring failed: worker lost three times"
    # re-opened by a new image: its old result no longer prioritises it
    assert entries["reopened"].category == "NOT TRIAGED"
    assert entries["reopened"].reason == "not scored yet (receiving)"


def test_category_no_longer_configured_is_not_triaged_with_the_reason(db: Database) -> None:
    with db.session() as s:
        add_exams(s, [Exam("urgent", "scored", 10, [Run("URGENT", 0.9)]),
                      Exam("routine", "scored", 20, [Run("ROUTINE", 0.1)])])
    page = read(db)
    assert uids(page) == ["routine", "urgent"]
    urgent = by_uid(page)["urgent"]
    assert urgent.category == "NOT TRIAGED"
    assert urgent.reason is not None and "'URGENT' is not one of TRIAGE_PRIORITIES" in urgent.reason


# ---- which exams ---------------------------------------------------------------------

def test_finished_exams_leave_after_the_recent_window_unfinished_and_failed_stay(db: Database) -> None:
    old = 3 * 24 * 60
    with db.session() as s:
        add_exams(s, [
            Exam("delivered.old", "delivered", old, [Run("HIGH", 0.9)]),
            Exam("delivered.recent", "delivered", 60, [Run("HIGH", 0.9)]),
            # arrived long ago, delivered an hour ago (e.g. after a re-score): still recent
            Exam("delivered.late", "delivered", old, [Run("ROUTINE", 0.1)], delivered_age_minutes=60),
            Exam("skipped.old", "skipped", old, skip="too old"),
            Exam("skipped.recent", "skipped", 60, skip="too old"),
            Exam("failed.old", "failed", old, [Run(status="failed")], failure="decode error"),
            Exam("scored.old", "scored", old, [Run("MEDIUM", 0.3)]),
            Exam("receiving.old", "receiving", old),
            Exam("queued.old", "queued", old),
        ])
    shown = set(uids(read(db)))  # default window: 24 h before now
    assert shown == {"delivered.recent", "delivered.late", "skipped.recent", "failed.old",
                     "scored.old", "receiving.old", "queued.old"}
    wider = read(db, WorklistRequest(since=NOW - timedelta(days=4)))
    assert {"delivered.old", "skipped.old"} <= set(uids(wider))
    assert read(db, WorklistRequest(since=NOW - timedelta(days=4))).total == 9
    assert read(db).since == NOW - timedelta(hours=24)


def test_status_and_category_filters_narrow_entries_and_total(db: Database) -> None:
    with db.session() as s:
        add_exams(s, mixed_exams())
    high = read(db, WorklistRequest(category="HIGH"))
    assert uids(high) == ["high.new", "high.old"] and high.total == 2
    not_triaged = read(db, WorklistRequest(category="NOT TRIAGED", limit=2))
    assert uids(not_triaged) == ["receiving", "unverified"] and not_triaged.total == 4
    assert not_triaged.has_more
    scored = read(db, WorklistRequest(status="scored"))
    assert uids(scored) == ["high.new", "routine", "partial", "unverified"] and scored.total == 4
    both = read(db, WorklistRequest(status="scored", category="NOT TRIAGED"))
    assert uids(both) == ["unverified"] and both.total == 1
    one = read(db, WorklistRequest(study_instance_uid="medium"))
    assert uids(one) == ["medium"] and one.total == 1


def test_entry_carries_run_and_exam_facts_and_no_patient_identity(db: Database) -> None:
    with db.session() as s:
        add_exams(s, [
            Exam("run.partial", "scored", 10, [Run("PARTIAL", 0.4, partial=True, model_set="ms-7")]),
            Exam("exam.partial", "receiving", 20, partial=True),
            Exam("whole", "delivered", 30, [Run("HIGH", 0.7)]),
        ])
    entries = by_uid(read(db))
    assert entries["run.partial"].partial and entries["exam.partial"].partial
    assert not entries["whole"].partial
    whole = entries["whole"]
    assert whole.accession_numbers == ("Awhole",)
    assert whole.model_set_version == "ms-1"
    assert whole.first_received_at == NOW - timedelta(minutes=30)
    assert whole.last_received_at == NOW - timedelta(minutes=29)
    assert whole.scored_at == NOW - timedelta(minutes=24)
    assert whole.delivered_at == NOW - timedelta(minutes=20)
    data = whole.to_dict()
    assert set(data) == {
        "study_instance_uid", "accession_numbers", "status", "category", "reason", "score",
        "partial", "model_set_version", "first_received_at", "last_received_at", "scored_at",
        "delivered_at", "failure_reason", "skip_reason"}
    assert data["delivered_at"] == (NOW - timedelta(minutes=20)).isoformat()
    assert not any("patient" in key for key in data)


# ---- paging --------------------------------------------------------------------------

def many_exams(n: int, prefix: str = "x") -> list[Exam]:
    """Every status and category, some re-scored, some older than the default window."""
    cycle: list[tuple[str, list[Run]]] = [
        ("delivered", [Run("HIGH", 0.9)]),
        ("scored", [Run("HIGH", 0.8), Run("MEDIUM", 0.3)]),
        ("delivered", [Run("ROUTINE", 0.1)]),
        ("scored", [Run("NOT TRIAGED", 0.5, reason="unverified")]),
        ("scored", [Run("PARTIAL", 0.4, partial=True)]),
        ("failed", [Run(status="failed")]),
        ("receiving", [Run("HIGH", 0.9)]),
        ("skipped", []),
        ("queued", []),
        ("scoring", []),
    ]
    exams = []
    for i in range(n):
        status, runs = cycle[i % len(cycle)]
        exams.append(Exam(f"{prefix}.{i}", status, age_minutes=i * 3, runs=list(runs),
                          skip="too old" if status == "skipped" else None,
                          failure="decode error" if status == "failed" else None))
    return exams


def expected_order(exams: list[Exam], since: datetime) -> list[str]:
    """The worklist rule written out plainly, to check the SQL against (``exams`` in the
    order they were inserted: the later one first when two arrived at the same time)."""
    order = category_order(PRIORITIES)
    kept = []
    for n, e in enumerate(exams):
        finished = (e.received + timedelta(minutes=10) if e.status == "delivered"
                    else e.received + timedelta(minutes=1))
        if e.status in ("delivered", "skipped") and finished < since:
            continue
        latest = e.runs[-1] if e.runs else None
        category = "NOT TRIAGED"
        if (latest is not None and latest.status == "succeeded" and e.status in RESULT_STATES
                and latest.category in order):
            category = latest.category
        kept.append((order.index(category), -e.received.timestamp(), -n, e.uid))
    return [uid for *_, uid in sorted(kept)]


def walk(db: Database, first: WorklistRequest, *, by_cursor: bool) -> list[WorklistPage]:
    pages = [read(db, first)]
    while pages[-1].has_more:
        assert pages[-1].next_cursor is not None
        request = (WorklistRequest(limit=first.limit, cursor=pages[-1].next_cursor) if by_cursor
                   else WorklistRequest(limit=first.limit, offset=first.limit * len(pages)))
        pages.append(read(db, request))
        assert len(pages) < 100
    return pages


@pytest.mark.parametrize("by_cursor", [True, False], ids=["cursor", "offset"])
def test_pages_return_every_exam_once_in_worklist_order(db: Database, by_cursor: bool) -> None:
    exams = many_exams(95)
    with db.session() as s:
        add_exams(s, exams)
    pages = walk(db, WorklistRequest(limit=10), by_cursor=by_cursor)
    seen = [uid for page in pages for uid in uids(page)]
    assert seen == expected_order(exams, NOW - timedelta(hours=24))
    assert len(seen) == len(set(seen)) == pages[0].total
    assert all(len(p.entries) == 10 for p in pages[:-1])
    assert not pages[-1].has_more and pages[-1].next_cursor is None


def test_cursor_page_is_not_shifted_by_an_exam_arriving_between_pages(db: Database) -> None:
    exams = many_exams(30)
    with db.session() as s:
        add_exams(s, exams)
    first = read(db, WorklistRequest(limit=5))
    with db.session() as s:  # a new HIGH exam sorts before everything already seen
        add_exams(s, [Exam("newcomer", "scored", 0, [Run("HIGH", 0.99)])])
    assert first.next_cursor is not None
    rest = walk(db, WorklistRequest(limit=5, cursor=first.next_cursor), by_cursor=True)
    seen = uids(first) + [uid for page in rest for uid in uids(page)]
    assert seen == expected_order(exams, NOW - timedelta(hours=24))


def test_requests_that_cannot_be_used_are_refused_with_the_fix(db: Database) -> None:
    with pytest.raises(InvalidWorklistRequest, match="1 to 500"):
        WorklistRequest(limit=0)
    with pytest.raises(InvalidWorklistRequest, match="use one of receiving"):
        WorklistRequest(status="done")
    with pytest.raises(InvalidWorklistRequest, match="timezone-aware"):
        WorklistRequest(since=datetime(2026, 1, 1))  # a naive time
    with pytest.raises(InvalidWorklistRequest, match="not both"):
        WorklistRequest(cursor="abc", offset=10)
    with pytest.raises(InvalidWorklistRequest, match="next_cursor of the previous page"):
        read(db, WorklistRequest(cursor="not-a-cursor"))
    with pytest.raises(InvalidWorklistRequest, match="HIGH, MEDIUM, ROUTINE, PARTIAL, NOT TRIAGED"):
        read(db, WorklistRequest(category="URGENT"))


# ---- bounded statements --------------------------------------------------------------

def test_statement_count_is_the_same_for_30_and_3000_exams(db: Database) -> None:
    requests = [
        WorklistRequest(),
        WorklistRequest(limit=7, offset=14),
        WorklistRequest(category="NOT TRIAGED", status="scored"),
    ]

    def counts() -> list[int]:
        first = read(db, WorklistRequest(limit=7))
        assert first.next_cursor is not None
        cursor_page = WorklistRequest(limit=7, cursor=first.next_cursor)
        return [statements_during(db, functools.partial(read, db, r)) for r in [*requests, cursor_page]]

    with db.session() as s:
        add_exams(s, many_exams(30, prefix="small"))
    small = counts()
    with db.session() as s:
        add_exams(s, many_exams(2970, prefix="big"))
    with db.session() as s:
        assert s.query(Study).count() == 3000
    big = counts()
    assert small == big
    assert max(big) <= 2  # a count and the page


def test_every_page_of_3000_exams_follows_the_worklist_rule(db: Database) -> None:
    exams = many_exams(3000)
    with db.session() as s:
        add_exams(s, exams)
    pages = walk(db, WorklistRequest(limit=500), by_cursor=True)
    seen = [uid for page in pages for uid in uids(page)]
    assert seen == expected_order(exams, NOW - timedelta(hours=24))
    assert pages[0].total == len(seen)


def test_a_held_exams_reason_on_the_worklist_hides_the_patient_ids_it_quotes(db: Database) -> None:
    with db.session() as s:
        add_exams(s, [Exam("held2", "held", 5, hold="patient identity conflict: exam patient "
                                                    "Patient ID 'P1' (issuer 'H') vs this image's "
                                                    "Patient ID 'P2' (no issuer)")])
    reason = by_uid(read(db))["held2"].reason or ""
    assert "'P1'" not in reason and "'P2'" not in reason and "patient identity conflict" in reason
