"""Exam status: only DESIGN.md's transitions are accepted, and each is logged."""

from __future__ import annotations

import itertools

import pytest
from sqlalchemy import select

from triage.db import Database, StatusChange, Study
from triage.db.states import set_status
from triage.errors import InvalidTransition
from triage.vocabulary import ExamStatus

S = ExamStatus
ALLOWED = {
    (S.RECEIVING, S.READY), (S.READY, S.QUEUED), (S.QUEUED, S.SCORING), (S.SCORING, S.SCORED),
    (S.SCORED, S.DELIVERED), (S.READY, S.FAILED), (S.QUEUED, S.FAILED), (S.SCORING, S.FAILED),
    (S.RECEIVING, S.SKIPPED), (S.SCORED, S.RECEIVING), (S.DELIVERED, S.RECEIVING),
    (S.FAILED, S.RECEIVING), (S.SKIPPED, S.RECEIVING),
    # nothing any member scores is found only while scoring
    (S.SCORING, S.SKIPPED),
    # held (e.g. conflicting patient identity) from any state; only a release leaves it
    *((s, S.HELD) for s in S if s is not S.HELD), (S.HELD, S.RECEIVING),
}


def _study(db: Database, status: ExamStatus) -> int:
    with db.session() as session:
        study = Study(grouping_key=f"k-{status}-{id(object())}", study_instance_uid="1.2.3",
                      status=status.value)
        session.add(study)
        session.flush()
        return study.id


@pytest.mark.parametrize(("current", "new"), list(itertools.product(S, S)))
def test_only_documented_transitions_are_accepted(sqlite_db: Database, current: S, new: S) -> None:
    study_id = _study(sqlite_db, current)
    with sqlite_db.session() as session:
        study = session.get(Study, study_id)
        assert study is not None
        if (current, new) in ALLOWED:
            set_status(session, study, new, reason="test")
        else:
            with pytest.raises(InvalidTransition, match=f"{current.value} -> {new.value}"):
                set_status(session, study, new)
            return
    with sqlite_db.session() as session:
        study = session.get(Study, study_id)
        assert study is not None and study.status == new.value
        log = session.scalars(select(StatusChange).where(StatusChange.study_id == study_id)).all()
        assert [(c.from_status, c.to_status) for c in log] == [(current.value, new.value)]


def test_reopen_counts_and_skip_reason_is_kept(sqlite_db: Database) -> None:
    study_id = _study(sqlite_db, S.RECEIVING)
    with sqlite_db.session() as session:
        study = session.get(Study, study_id)
        assert study is not None
        set_status(session, study, S.SKIPPED, reason="no scorable image")
        set_status(session, study, S.RECEIVING, reason="new CC image")
        assert study.skip_reason == "no scorable image" and study.reopen_count == 1
