"""history.score_history: which runs, in which order, a page at a time in two statements,
exact filters that treat every value as data, and what each caller may see."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy import event, func, select

from tests.history_rows import INJECTIONS, NOW, RunRow, add_runs
from triage.db import Database, Study
from triage.db.access import Access, Role
from triage.db.history import (
    HistoryAccessDenied,
    HistoryFilter,
    HistoryPage,
    InvalidHistoryFilter,
    csv_columns,
    csv_record,
    score_history,
    walk_history,
)

ADMIN = Access.for_role("ops", Role.ADMIN, show_patient_ids=False)
ADMIN_PIDS = Access.for_role("ops", Role.ADMIN, show_patient_ids=True)
VIEWER = Access.for_role("rr1", Role.VIEWER, show_patient_ids=True)
CATEGORIES = ("HIGH", "MEDIUM", "ROUTINE", "PARTIAL", "NOT TRIAGED")


def read(db: Database, flt: HistoryFilter | None = None, access: Access = ADMIN) -> HistoryPage:
    with db.session() as session:
        return score_history(session, flt or HistoryFilter(), access, categories=CATEGORIES)


def uids(page: HistoryPage) -> list[str]:
    return [r.study_instance_uid for r in page.rows]


def statements_during(db: Database, action: Callable[[], object]) -> int:
    count = 0

    def before(*_args: object) -> None:
        nonlocal count
        count += 1

    event.listen(db.engine, "before_cursor_execute", before)
    try:
        action()
    finally:
        event.remove(db.engine, "before_cursor_execute", before)
    return count


def test_runs_are_listed_newest_scored_first_with_the_ensembles_breast_scores(sqlite_db: Database) -> None:
    with sqlite_db.session() as s:
        add_runs(s, [RunRow("1.1", score=0.8, category="HIGH", minutes_ago=30),
                     RunRow("1.2", score=0.1, category="ROUTINE", minutes_ago=5),
                     RunRow("1.3", status="failed", minutes_ago=1)])
    page = read(sqlite_db)
    assert uids(page) == ["1.2", "1.1"]  # the failed run has no score: not history
    first = page.rows[1]
    assert first.exam_score == 0.8 and first.category == "HIGH" and first.verified
    assert first.breast("L") is not None and first.breast("L").p_malignant == 0.8  # type: ignore[union-attr]
    assert [b.laterality for b in first.breast_scores] == ["L", "R"]  # ensemble only, not m1
    assert first.scored_at == NOW - timedelta(minutes=30)
    assert first.accession_numbers == ("A1.1",) and first.patient_id is None
    assert not page.has_more and page.next_cursor is None


def test_cursor_pages_have_no_duplicates_or_gaps_even_when_runs_share_a_time(sqlite_db: Database) -> None:
    rows = [RunRow(f"2.{i}", minutes_ago=float(i // 4)) for i in range(53)]  # 4 runs per instant
    with sqlite_db.session() as s:
        add_runs(s, rows)
    seen: list[str] = []
    flt = HistoryFilter(limit=7)
    while True:
        page = read(sqlite_db, flt)
        seen += uids(page)
        if page.next_cursor is None:
            break
        # a run scored after the first page was read does not disturb the walk
        with sqlite_db.session() as s:
            add_runs(s, [RunRow(f"new.{len(seen)}", minutes_ago=0.0)])
        flt = HistoryFilter(limit=7, cursor=page.next_cursor)
    assert len(seen) == len(set(seen)) == 53
    assert set(seen) == {r.uid for r in rows}


def test_a_page_takes_two_statements_whatever_its_size(sqlite_db: Database) -> None:
    with sqlite_db.session() as s:
        add_runs(s, [RunRow(f"3.{i}") for i in range(300)])
    assert statements_during(sqlite_db, lambda: read(sqlite_db, HistoryFilter(limit=250))) == 2
    assert statements_during(sqlite_db, lambda: read(sqlite_db, HistoryFilter(limit=5))) == 2


def test_filters_select_by_time_accession_model_set_category_and_score(sqlite_db: Database) -> None:
    with sqlite_db.session() as s:
        add_runs(s, [
            RunRow("4.1", score=0.9, category="HIGH", model_set="ms-2", minutes_ago=60 * 30),
            RunRow("4.2", score=0.25, category="MEDIUM", accessions=("ACC1", "ACC7")),
            RunRow("4.3", score=0.05, category="ROUTINE", accessions=("ACC10",)),
            RunRow("4.4", score=0.6, category="NOT TRIAGED", verified=False),
        ])
    assert uids(read(sqlite_db, HistoryFilter(since=NOW - timedelta(hours=24)))) == ["4.4", "4.3", "4.2"]
    assert uids(read(sqlite_db, HistoryFilter(until=NOW - timedelta(hours=24)))) == ["4.1"]
    assert uids(read(sqlite_db, HistoryFilter(accession="ACC1"))) == ["4.2"]  # not ACC10
    assert uids(read(sqlite_db, HistoryFilter(accession="ACC7"))) == ["4.2"]
    assert uids(read(sqlite_db, HistoryFilter(model_set_version="ms-2"))) == ["4.1"]
    assert uids(read(sqlite_db, HistoryFilter(category="ROUTINE"))) == ["4.3"]
    assert uids(read(sqlite_db, HistoryFilter(min_score=0.2, max_score=0.7))) == ["4.4", "4.2"]
    assert uids(read(sqlite_db, HistoryFilter(study_instance_uid="4.3"))) == ["4.3"]


def test_injection_strings_and_like_wildcards_are_matched_as_plain_data(sqlite_db: Database) -> None:
    with sqlite_db.session() as s:
        add_runs(s, [RunRow("5.1", accessions=("ACC1",)),
                     RunRow("5.2", accessions=(INJECTIONS[0],), patient_id=INJECTIONS[1])])
        studies = s.scalar(select(func.count()).select_from(Study))
    for text in INJECTIONS:
        for flt in (HistoryFilter(accession=text), HistoryFilter(model_set_version=text),
                    HistoryFilter(study_instance_uid=text)):
            found = uids(read(sqlite_db, flt))
            assert found == (["5.2"] if flt.accession == INJECTIONS[0] else []), (text, flt)
        found = uids(read(sqlite_db, HistoryFilter(patient_id=text), ADMIN_PIDS))
        assert found == (["5.2"] if text == INJECTIONS[1] else [])
    with sqlite_db.session() as s:  # nothing was executed as SQL: the table is still there
        assert s.scalar(select(func.count()).select_from(Study)) == studies


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"limit": 0}, "limit"), ({"limit": 1001}, "limit"),
    ({"min_score": 1.5}, "min_score"), ({"max_score": -0.1}, "max_score"),
    ({"min_score": 0.8, "max_score": 0.2}, "max_score"),
    ({"since": NOW.replace(tzinfo=None)}, "since"),
    ({"since": NOW, "until": NOW - timedelta(days=1)}, "until"),
    ({"accession": "x" * 65}, "accession"), ({"accession": "  "}, "accession"),
    ({"model_set_version": "a\nb"}, "model_set_version"),
    ({"cursor": "not-a-cursor"}, "cursor"),
])
def test_a_filter_that_cannot_be_used_is_refused_naming_its_field(kwargs: dict[str, object],
                                                                  field: str) -> None:
    with pytest.raises(InvalidHistoryFilter) as caught:
        HistoryFilter(**kwargs)  # type: ignore[arg-type]
    assert caught.value.field == field and str(caught.value).startswith(field)


def test_unknown_category_is_refused_rather_than_matching_nothing(sqlite_db: Database) -> None:
    with pytest.raises(InvalidHistoryFilter, match="category: unknown category 'HIHG'"):
        read(sqlite_db, HistoryFilter(category="HIHG"))


def test_patient_ids_are_shown_and_searchable_only_when_access_allows(sqlite_db: Database) -> None:
    with sqlite_db.session() as s:
        add_runs(s, [RunRow("6.1", patient_id="PID-1")])
    assert read(sqlite_db, access=ADMIN).rows[0].patient_id is None
    assert "patient_id" not in read(sqlite_db, access=ADMIN).to_dict()["rows"][0]
    assert read(sqlite_db, access=ADMIN_PIDS).rows[0].patient_id == "PID-1"
    assert read(sqlite_db, access=ADMIN_PIDS).to_dict()["rows"][0]["patient_id"] == "PID-1"
    assert VIEWER.patient_ids is False  # the setting alone is not enough
    for access in (ADMIN, VIEWER):
        with pytest.raises(HistoryAccessDenied, match="TRIAGE_API_SHOW_PATIENT_IDS"):
            read(sqlite_db, HistoryFilter(patient_id="PID-1"), access)
    assert "patient_id" not in csv_columns(VIEWER) and "patient_id" in csv_columns(ADMIN_PIDS)


def test_viewers_get_no_scores_of_unverified_runs_and_cannot_filter_them_by_score(
        sqlite_db: Database) -> None:
    with sqlite_db.session() as s:
        add_runs(s, [RunRow("7.1", score=0.9, category="NOT TRIAGED", verified=False),
                     RunRow("7.2", score=0.8, category="HIGH")])
    viewer = {r.study_instance_uid: r for r in read(sqlite_db, access=VIEWER).rows}
    assert viewer["7.1"].exam_score is None
    assert all(b.p_malignant is None and b.p_benign is None for b in viewer["7.1"].breast_scores)
    assert viewer["7.2"].exam_score == 0.8
    assert read(sqlite_db, access=ADMIN).rows[1].exam_score == 0.9  # admins see it
    assert uids(read(sqlite_db, HistoryFilter(min_score=0.85), VIEWER)) == []
    assert uids(read(sqlite_db, HistoryFilter(min_score=0.85), ADMIN)) == ["7.1"]


def test_walk_reads_every_matching_run_a_page_per_session_and_csv_cells_are_safe(
        sqlite_db: Database) -> None:
    with sqlite_db.session() as s:
        add_runs(s, [RunRow(f"8.{i}", accessions=(f"=HYPERLINK({i})",)) for i in range(23)])
    rows = list(walk_history(sqlite_db.session, HistoryFilter(), ADMIN, page_size=5))
    assert len({r.study_instance_uid for r in rows}) == 23
    record = dict(zip(csv_columns(ADMIN), csv_record(rows[0], ADMIN), strict=True))
    assert record["accession_numbers"].startswith("'=")  # not a formula in a spreadsheet
    assert record["verified"] == "true" and record["right_p_benign"] == ""
