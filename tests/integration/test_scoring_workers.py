"""Ready exams become scores: embedded default (SQLite, in-process worker) and production
(PostgreSQL, Redis, a real Celery worker process), with worker loss and broker outages.

Exams are sent by DCMTK storescu; the reduced-resolution test member is used
(TRIAGE_TESTING=1), the same GMIC code at 1024x640.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pydicom
import pydicom.uid
import pytest
from sqlalchemy import select

from tests.integration.listener_helpers import echo, free_port, storescu
from tests.integration.product_helpers import (
    TEST_MEMBER,
    Stack,
    exam_status,
    runs_of,
    small_exam,
    study_row,
    wait_until,
)
from tests.servers import RedisServer
from triage.db import OutboxItem, RunMember, Score
from triage.vocabulary import NOT_TRIAGED


@pytest.fixture
def stack_factory(tmp_path: Path) -> Iterator[list[Stack]]:
    stacks: list[Stack] = []
    yield stacks
    for s in stacks:
        s.close()


def _listener_up(stack: Stack, port: int) -> None:
    wait_until(lambda: echo(port), 90, "C-ECHO from triage", stack.logs)


def _send(stack: Stack, port: int, files: list[Path]) -> None:
    result = storescu(port, files)
    assert result.returncode == 0, result.stdout + result.stderr


def _assert_scored_once(stack: Stack, study_uid: str) -> None:
    runs = runs_of(stack.db, study_uid)
    assert [r.status for r in runs] == ["succeeded"], runs
    run = runs[0]
    assert run.category == NOT_TRIAGED and not run.verified and run.exam_score is not None
    with stack.db.session() as session:
        members = session.scalars(select(RunMember).where(RunMember.run_id == run.id)).all()
        assert [(m.name, m.weights_status, m.included) for m in members] == [
            (TEST_MEMBER, "synthetic_demo", True)]
        assert members[0].weights_sha256 and len(members[0].weights_sha256) == 64
        levels = sorted(s.level for s in session.scalars(select(Score).where(Score.run_id == run.id)))
        assert levels == ["breast"] * 4 + ["exam"] + ["view"] * 4
        assert session.scalars(select(OutboxItem).where(OutboxItem.run_id == run.id)).all()


def test_embedded_default_scores_a_dcmtk_sent_exam_into_sqlite(
    tmp_path: Path, stack_factory: list[Stack]
) -> None:
    port = free_port()
    stack = Stack(tmp_path / "embedded")
    stack_factory.append(stack)
    assert stack.settings.resolved_database_url.startswith("sqlite")
    stack.spawn("serve", TRIAGE_DICOM_PORT=str(port))
    _listener_up(stack, port)
    uid, files = small_exam(tmp_path / "exam")
    _send(stack, port, files)
    wait_until(lambda: exam_status(stack.db, uid) == "delivered", 180, "exam delivered", stack.logs)
    _assert_scored_once(stack, uid)
    assert study_row(stack.db, uid).scoring_attempts == 1
    # an older acquisition of a view that is already chosen does not change the chosen set:
    # it is stored, and the scored exam is not re-opened
    older = _older_copy(files[0], tmp_path / "older.dcm")
    _send(stack, port, [older])
    assert exam_status(stack.db, uid) == "delivered"
    _assert_scored_once(stack, uid)


def _older_copy(path: Path, out: Path) -> Path:
    """The same view under a new SOP Instance UID, acquired a day before the original."""
    ds = pydicom.dcmread(path)
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    acquired = ds.get("AcquisitionDateTime") or f"{ds.AcquisitionDate}{ds.AcquisitionTime}"
    day = (datetime.strptime(str(acquired)[:8], "%Y%m%d") - timedelta(days=1)).strftime("%Y%m%d")
    ds.AcquisitionDateTime = day + str(acquired)[8:]
    for keyword in ("AcquisitionDate", "ContentDate"):
        if keyword in ds:
            setattr(ds, keyword, day)
    ds.save_as(out)
    return out


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(root=tmp_path / "redis")
    server.root.mkdir()
    server.start()
    yield server
    server.destroy()


def _celery_stack(tmp_path: Path, postgres_url: str, redis: RedisServer, port: int,
                  **env: str) -> Stack:
    return Stack(tmp_path / "celery", extra_env={
        "TRIAGE_DATABASE_URL": postgres_url, "TRIAGE_BROKER_URL": redis.url,
        "TRIAGE_DICOM_PORT": str(port), "TRIAGE_REQUEUE_AFTER_SECONDS": "5",
        "TRIAGE_BROKER_VISIBILITY_TIMEOUT": "20", **env})


def test_celery_worker_scores_a_dcmtk_sent_exam_into_postgresql(
    tmp_path: Path, stack_factory: list[Stack], postgres_url: str, redis: RedisServer
) -> None:
    port = free_port()
    stack = _celery_stack(tmp_path, postgres_url, redis, port)
    stack_factory.append(stack)
    assert stack.db.engine.dialect.name == "postgresql"
    stack.spawn("listen")
    stack.spawn("worker")
    _listener_up(stack, port)
    uid, files = small_exam(tmp_path / "exam")
    _send(stack, port, files)
    wait_until(lambda: exam_status(stack.db, uid) == "delivered", 240, "exam delivered", stack.logs)
    _assert_scored_once(stack, uid)


def test_worker_killed_during_scoring_is_redelivered_and_scored_once(
    tmp_path: Path, stack_factory: list[Stack], postgres_url: str, redis: RedisServer
) -> None:
    port = free_port()
    stack = _celery_stack(tmp_path, postgres_url, redis, port)
    stack_factory.append(stack)
    stack.spawn("listen")
    slow = stack.spawn("worker", name="slow-worker", FAULT_SCORING_DELAY_SECONDS="30")
    _listener_up(stack, port)
    uid, files = small_exam(tmp_path / "exam")
    _send(stack, port, files)
    wait_until(lambda: exam_status(stack.db, uid) == "scoring", 120, "scoring", stack.logs)
    slow.kill()  # SIGKILL the worker and its pool process mid-scoring
    assert exam_status(stack.db, uid) == "scoring" and runs_of(stack.db, uid) == []
    stack.spawn("worker", name="new-worker")
    wait_until(lambda: exam_status(stack.db, uid) == "delivered", 240, "exam delivered", stack.logs)
    _assert_scored_once(stack, uid)
    study = study_row(stack.db, uid)
    assert study.scoring_attempts == 2 and study.worker_losses == 1


def test_exam_that_always_kills_its_worker_fails_after_three_deliveries(
    tmp_path: Path, stack_factory: list[Stack], postgres_url: str, redis: RedisServer
) -> None:
    port = free_port()
    uid, files = small_exam(tmp_path / "exam", seed=11)
    stack = _celery_stack(tmp_path, postgres_url, redis, port,
                          FAULT_KILL_WORKER_ON_STUDY_UID=uid)
    stack_factory.append(stack)
    stack.spawn("listen")
    stack.spawn("worker")
    _listener_up(stack, port)
    _send(stack, port, files)
    wait_until(lambda: exam_status(stack.db, uid) == "failed", 300, "exam failed", stack.logs)
    study = study_row(stack.db, uid)
    assert study.worker_losses == 3 and study.scoring_attempts == 3
    assert study.failure_reason and study.failure_reason.startswith("worker lost")
    assert "interrupted 3 times" in study.failure_reason
    assert runs_of(stack.db, uid) == []


def test_exams_ready_while_redis_is_down_are_scored_after_it_returns(
    tmp_path: Path, stack_factory: list[Stack], postgres_url: str, redis: RedisServer
) -> None:
    port = free_port()
    stack = _celery_stack(tmp_path, postgres_url, redis, port)
    stack_factory.append(stack)
    stack.spawn("listen")
    _listener_up(stack, port)
    redis.stop()
    uid, files = small_exam(tmp_path / "exam")
    _send(stack, port, files)  # the listener keeps receiving while the broker is down
    wait_until(lambda: exam_status(stack.db, uid) == "queued", 120, "queued", stack.logs)
    redis.start()  # same port, empty: the enqueued message (if any) is gone
    stack.spawn("worker")
    wait_until(lambda: exam_status(stack.db, uid) == "delivered", 240, "exam delivered", stack.logs)
    _assert_scored_once(stack, uid)

