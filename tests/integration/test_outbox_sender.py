"""The outbox sender against a real DICOM peer that answers each object differently:
refusals are permanent with their reason, out-of-resources is retried with backoff,
warnings count as stored, and the exam is delivered only when every row is sent."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.presentation import AllStoragePresentationContexts
from sqlalchemy import select
from typer.testing import CliRunner

from tests.integration.listener_helpers import free_port, image_dataset
from triage.cli import app as cli_app
from triage.config import Settings
from triage.db import AuditEvent, Database, OutboxItem, ScoringRun, Study
from triage.db.models import utcnow
from triage.delivery import backoff_seconds, send_pending
from triage.vocabulary import ExamStatus


class Archive:
    """A pynetdicom SCP whose answer per SOP Instance UID the test sets."""

    def __init__(self) -> None:
        self.answers: dict[str, int] = {}
        self.received: list[str] = []
        self.port = free_port()
        ae = AE(ae_title="ARCHIVE")
        ae.supported_contexts = AllStoragePresentationContexts
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._store)])

    def _store(self, event: evt.Event) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        status = self.answers.get(uid, 0x0000)
        if status in (0x0000, 0xB000):
            self.received.append(uid)
        return status

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def archive() -> Iterator[Archive]:
    server = Archive()
    yield server
    server.close()


def _objects(db: Database, settings: Settings, tmp_path: Path, destination: str,
             n: int) -> tuple[int, list[str]]:
    uids = []
    with db.session() as session:
        study = Study(grouping_key="1.2.9", study_instance_uid="1.2.9",
                      status=ExamStatus.SCORED.value)
        session.add(study)
        session.flush()
        run = ScoringRun(study_id=study.id, model_set_version="ms", instances_digest="d",
                         status="succeeded", finished_at=utcnow())
        session.add(run)
        session.flush()
        for i in range(n):
            ds = image_dataset(study_uid="1.2.9")
            ds.file_meta = FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            path = tmp_path / f"obj{i}.dcm"
            ds.save_as(path, enforce_file_format=True)
            uids.append(str(ds.SOPInstanceUID))
            session.add(OutboxItem(study_id=study.id, run_id=run.id, kind="sc_overlay",
                                   sop_class_uid=str(ds.SOPClassUID),
                                   sop_instance_uid=str(ds.SOPInstanceUID),
                                   transfer_syntax_uid=ExplicitVRLittleEndian, path=str(path),
                                   destination=destination))
        return study.id, uids


def _rows(db: Database) -> dict[str, OutboxItem]:
    with db.session() as session:
        rows = session.query(OutboxItem).all()
        for r in rows:
            session.expunge(r)
        return {r.sop_instance_uid: r for r in rows}


def _status(db: Database, study_id: int) -> str:
    with db.session() as session:
        study = session.get(Study, study_id)
        assert study is not None
        return study.status


def test_refusal_is_permanent_out_of_resources_is_retried_and_warning_is_stored(
    sqlite_db: Database, settings: Settings, tmp_path: Path, archive: Archive
) -> None:
    study_id, (refused, busy, ok, warned) = _objects(
        sqlite_db, settings, tmp_path, f"ARCHIVE@127.0.0.1:{archive.port}", 4)
    archive.answers = {refused: 0xA900, busy: 0xA700, warned: 0xB000}
    assert send_pending(sqlite_db, settings) == 2
    rows = _rows(sqlite_db)
    assert rows[refused].status == "failed" and rows[refused].last_status_code == 0xA900
    assert rows[refused].last_error
    assert rows[busy].status == "pending" and rows[busy].attempts == 1
    assert rows[busy].next_attempt_at > utcnow() + timedelta(seconds=backoff_seconds(1) - 2)
    assert rows[ok].status == "sent" and rows[warned].status == "sent"
    assert _status(sqlite_db, study_id) == "scored"
    # not due yet: nothing is sent again
    assert send_pending(sqlite_db, settings) == 0
    archive.answers[busy] = 0x0000
    assert send_pending(sqlite_db, settings, now=utcnow() + timedelta(seconds=60)) == 1
    assert _rows(sqlite_db)[busy].status == "sent"
    assert archive.received.count(ok) == 1  # a sent row is never sent again
    # one permanent refusal keeps the exam from `delivered`: an admin must look at it
    assert _status(sqlite_db, study_id) == "scored"


def test_exam_is_delivered_when_every_row_reached_its_destination(
    sqlite_db: Database, settings: Settings, tmp_path: Path, archive: Archive
) -> None:
    study_id, uids = _objects(sqlite_db, settings, tmp_path,
                              f"ARCHIVE@127.0.0.1:{archive.port}", 3)
    assert send_pending(sqlite_db, settings) == 3
    assert sorted(archive.received) == sorted(uids)
    assert _status(sqlite_db, study_id) == "delivered"


def test_unreachable_archive_is_transient_with_growing_backoff(
    sqlite_db: Database, settings: Settings, tmp_path: Path
) -> None:
    _, (uid,) = _objects(sqlite_db, settings, tmp_path, f"NOBODY@127.0.0.1:{free_port()}", 1)
    for attempt in range(1, 4):
        send_pending(sqlite_db, settings, now=utcnow() + timedelta(hours=attempt))
        row = _rows(sqlite_db)[uid]
        assert row.status == "pending" and row.attempts == attempt
    assert [backoff_seconds(a) for a in (1, 2, 3, 20)] == [1.0, 2.0, 4.0, 300.0]


def test_admin_retry_sends_a_refused_object_again_once_the_archive_accepts_it(
    sqlite_db: Database, settings: Settings, tmp_path: Path, archive: Archive,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    study_id, (refused, ok) = _objects(sqlite_db, settings, tmp_path,
                                       f"ARCHIVE@127.0.0.1:{archive.port}", 2)
    archive.answers = {refused: 0xA900}
    assert send_pending(sqlite_db, settings) == 1
    assert _rows(sqlite_db)[refused].status == "failed"

    monkeypatch.setenv("TRIAGE_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("TRIAGE_DATABASE_URL", settings.resolved_database_url)
    listed = CliRunner().invoke(cli_app, ["outbox", "list", "--status", "failed", "--json"])
    assert listed.exit_code == 0, listed.output
    (entry,) = json.loads(listed.stdout)
    assert entry["sop_instance_uid"] == refused and entry["last_status_code"] == 0xA900
    # no scope given: refused, so that nothing is re-sent by accident
    assert CliRunner().invoke(cli_app, ["outbox", "retry", "--reason", "x"]).exit_code == 2
    unknown = CliRunner().invoke(cli_app, ["outbox", "retry", "--study", "1.2.404",
                                           "--reason", "typo"])
    assert unknown.exit_code == 1 and "1.2.404" in unknown.output

    archive.answers = {}  # the archive now takes the SOP class
    done = CliRunner().invoke(cli_app, ["outbox", "retry", "--study", "1.2.9",
                                        "--reason", "archive now accepts SC"])
    assert done.exit_code == 0 and done.stdout.startswith("1 refused object")
    row = _rows(sqlite_db)[refused]
    assert row.status == "pending" and row.attempts == 0
    with sqlite_db.session() as session:
        (event,) = session.scalars(select(AuditEvent).where(AuditEvent.kind == "outbox_retry"))
        assert event.detail["reason"] == "archive now accepts SC"
        assert event.detail["previous_attempts"] == 1
    assert send_pending(sqlite_db, settings) == 1
    assert archive.received.count(refused) == 1 and archive.received.count(ok) == 1
    assert _status(sqlite_db, study_id) == "delivered"
