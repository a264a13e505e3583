"""The C-STORE ingest answers success only after the bytes are durable and the row committed.

The file system is the real one, recorded in order; the database session, classification
and recording are small local fakes that append to the same event log, so the tests can
prove the ORDER of operations and what happens when each step fails.
"""

from __future__ import annotations

import errno
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from tests.integration.listener_helpers import (
    encode_data_set,
    image_dataset,
    malformed_corpus,
    write_received_file,
)
from triage.config import Settings
from triage.db import Quarantined
from triage.dicom.classify import Classification
from triage.dicom.listener import IngestService, StoreRequest
from triage.dicom.records import IngestOutcome, StoredObject
from triage.dicom.spool import OsFileSystem, Spool, dataset_digest, sidecar_path
from triage.dicom.validate import STATUS_OUT_OF_RESOURCES, STATUS_SUCCESS
from triage.vocabulary import ImageClass, Laterality, View

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


class Log(list[tuple[str, str]]):
    def names(self) -> list[str]:
        return [name for name, _ in self]

    def index_of(self, name: str, detail: str | None = None) -> int:
        for i, (n, d) in enumerate(self):
            if n == name and (detail is None or d == detail):
                return i
        raise AssertionError(f"{name} {detail or ''} never happened: {self}")


class RecordingFileSystem(OsFileSystem):
    def __init__(self, log: Log, fail: dict[str, OSError] | None = None) -> None:
        self.log = log
        self.fail = fail or {}

    def _step(self, name: str, detail: str) -> None:
        self.log.append((name, detail))
        if name in self.fail:
            raise self.fail[name]

    def fsync_file(self, path: Path) -> None:
        self._step("fsync_file", str(path))
        super().fsync_file(path)

    def rename(self, src: Path, dst: Path) -> None:
        self._step("rename", str(dst))
        super().rename(src, dst)

    def fsync_dir(self, path: Path) -> None:
        self._step("fsync_dir", str(path))
        super().fsync_dir(path)

    def unlink(self, path: Path) -> None:
        self._step("unlink", str(path))
        super().unlink(path)

    def write_file(self, path: Path, data: bytes) -> None:
        self._step("write_file", str(path))
        super().write_file(path, data)


class FakeSession:
    def __init__(self, log: Log, commit_error: Exception | None) -> None:
        self.log = log
        self.commit_error = commit_error
        self.added: list[Any] = []

    def add(self, row: Any) -> None:
        self.log.append(("add", type(row).__name__))
        self.added.append(row)

    def commit(self) -> None:
        self.log.append(("commit", ""))
        if self.commit_error is not None:
            raise self.commit_error

    def rollback(self) -> None:
        self.log.append(("rollback", ""))

    def close(self) -> None:
        self.log.append(("close", ""))


class Harness:
    """An IngestService wired to recording fakes, and helpers to feed it files."""

    def __init__(self, settings: Settings, *, fs_fail: dict[str, OSError] | None = None,
                 record_error: Exception | None = None, commit_error: Exception | None = None,
                 duplicate: bool = False, classify_error: Exception | None = None) -> None:
        self.log = Log()
        self.sessions: list[FakeSession] = []
        self.recorded: list[StoredObject] = []
        self.spool = Spool(settings.spool_dir, settings.quarantine_dir,
                           RecordingFileSystem(self.log, fs_fail))
        self.spool.prepare()
        self.record_error = record_error
        self.commit_error = commit_error
        self.duplicate = duplicate
        self.classify_error = classify_error
        self.service = IngestService(settings, self._session, self.spool,
                                     classify=self._classify, record=self._record,
                                     clock=lambda: NOW)

    def _session(self) -> Any:
        session = FakeSession(self.log, self.commit_error)
        self.sessions.append(session)
        self.log.append(("session", ""))
        return session

    def _classify(self, header: Any, settings: Settings) -> Classification:
        self.log.append(("classify", str(header.SOPInstanceUID)))
        if self.classify_error is not None:
            raise self.classify_error
        return Classification(image_class=ImageClass.FFDM, view=View.CC, view_label="CC",
                              laterality=Laterality.LEFT, scorable=True, reason=None,
                              loopback=False, lossy=False)

    def _record(self, session: FakeSession, settings: Settings, header: Any,
                stored: StoredObject, classification: Classification, **kw: Any) -> IngestOutcome:
        self.log.append(("record", str(stored.path)))
        self.recorded.append(stored)
        if self.record_error is not None:
            raise self.record_error
        return IngestOutcome(study_id=1, instance_id=None if self.duplicate else 7,
                             duplicate=self.duplicate, new_version=False, reopened=False)

    def received(self, data_set: bytes, sop_class: str, sop_instance: str,
                 name: str = "rx-test.part", **kw: Any) -> StoreRequest:
        path = write_received_file(self.spool.tmp_dir / name, data_set, sop_class=sop_class,
                                   sop_instance=sop_instance)
        digest, _ = dataset_digest(path)
        fields: dict[str, Any] = dict(
            path=path, sop_class_uid=sop_class, sop_instance_uid=sop_instance,
            transfer_syntax_uid="1.2.840.10008.1.2.1", calling_ae="MODALITY",
            peer_address="127.0.0.1", peer_port=4242, association_id=3, digest=digest,
            size_bytes=path.stat().st_size)
        fields.update(kw)
        return StoreRequest(**fields)

    def valid(self, **kw: Any) -> StoreRequest:
        ds = image_dataset(8, 8)
        return self.received(encode_data_set(ds), str(ds.SOPClassUID), str(ds.SOPInstanceUID),
                             **kw)


def spool_files(settings: Settings) -> list[Path]:
    return [p for p in settings.spool_dir.rglob("*.dcm")]


def test_success_comes_after_fsync_rename_directory_fsync_and_commit(settings: Settings) -> None:
    h = Harness(settings)
    request = h.valid()
    status = h.service.store(request)
    h.log.append(("answered", f"{status:#06x}"))
    assert status == STATUS_SUCCESS
    final = h.recorded[0].path
    order = [h.log.index_of("fsync_file", str(request.path)),
             h.log.index_of("rename", str(final)),
             h.log.index_of("fsync_dir", str(final.parent)),
             h.log.index_of("record", str(final)),
             h.log.index_of("commit"),
             h.log.index_of("answered")]
    assert order == sorted(order)
    assert final.exists() and not request.path.exists()
    assert h.recorded[0].raw_digest == request.digest
    assert dataset_digest(final)[0] == request.digest


def test_database_failure_answers_out_of_resources_and_no_file_stays(settings: Settings) -> None:
    h = Harness(settings, record_error=OperationalError("INSERT", {}, Exception("db down")))
    request = h.valid()
    assert h.service.store(request) == STATUS_OUT_OF_RESOURCES
    assert "commit" not in h.log.names() and "rollback" in h.log.names()
    assert spool_files(settings) == [] and not request.path.exists()


def test_failed_commit_answers_out_of_resources_and_keeps_the_file_a_row_may_name(
        settings: Settings) -> None:
    h = Harness(settings, commit_error=OperationalError("COMMIT", {}, Exception("lost")))
    assert h.service.store(h.valid()) == STATUS_OUT_OF_RESOURCES
    assert spool_files(settings) == [h.recorded[0].path]


def test_disk_full_while_receiving_answers_out_of_resources_without_the_database(
        settings: Settings) -> None:
    h = Harness(settings)
    request = h.valid(write_error=OSError(errno.ENOSPC, "No space left on device"))
    assert h.service.store(request) == STATUS_OUT_OF_RESOURCES
    assert "session" not in h.log.names() and "rename" not in h.log.names()
    assert not request.path.exists()


def test_fsync_failure_answers_out_of_resources_without_the_database(settings: Settings) -> None:
    h = Harness(settings, fs_fail={"fsync_file": OSError(errno.EIO, "I/O error")})
    request = h.valid()
    assert h.service.store(request) == STATUS_OUT_OF_RESOURCES
    assert "session" not in h.log.names() and "rename" not in h.log.names()
    assert spool_files(settings) == [] and not request.path.exists()


def test_identical_duplicate_file_is_removed_only_after_the_commit(settings: Settings) -> None:
    h = Harness(settings, duplicate=True)
    assert h.service.store(h.valid()) == STATUS_SUCCESS
    final = h.recorded[0].path
    assert h.log.index_of("commit") < h.log.index_of("unlink", str(final))
    assert not final.exists() and spool_files(settings) == []


def test_unexpected_error_answers_out_of_resources_and_drops_the_temp_file(
        settings: Settings) -> None:
    h = Harness(settings, classify_error=RuntimeError("bug"))
    request = h.valid()
    assert h.service.store(request) == STATUS_OUT_OF_RESOURCES
    assert not request.path.exists() and "session" not in h.log.names()


@pytest.mark.parametrize("broken", malformed_corpus()[:4] + malformed_corpus()[-2:],
                         ids=lambda b: b.name)
def test_refused_input_is_quarantined_with_sidecar_and_row(settings: Settings,
                                                           broken: Any) -> None:
    h = Harness(settings)
    request = h.received(broken.data_set, broken.sop_class, broken.sop_instance)
    original = request.path.read_bytes()
    status = h.service.store(request)
    assert status == broken.expected_status
    assert "classify" not in h.log.names() and "record" not in h.log.names()
    rows = [r for s in h.sessions for r in s.added if isinstance(r, Quarantined)]
    assert len(rows) == 1 and rows[0].status_code == status
    target = Path(rows[0].path)
    assert target.read_bytes() == original and target.parent == settings.quarantine_dir
    sidecar = json.loads(sidecar_path(target).read_text())
    assert sidecar["status_code"] == status and sidecar["calling_ae"] == "MODALITY"
    assert sidecar["peer_address"] == "127.0.0.1" and sidecar["reason"] == rows[0].reason
    assert sidecar["received_at_utc"] == NOW.isoformat()
    assert sidecar["requested_sop_instance_uid"] == broken.sop_instance
    assert h.log.index_of("write_file") < h.log.index_of("commit")


@pytest.mark.parametrize("fail", [
    lambda: {"rename": OSError(errno.ENOSPC, "No space left on device")},
    lambda: {"write_file": OSError(errno.ENOSPC, "No space left on device")},
], ids=["bytes", "sidecar"])
def test_quarantine_that_cannot_be_written_answers_out_of_resources(
        settings: Settings, fail: Callable[[], dict[str, OSError]]) -> None:
    h = Harness(settings, fs_fail=fail())
    broken = malformed_corpus()[0]
    assert h.service.store(h.received(broken.data_set, broken.sop_class,
                                      broken.sop_instance)) == STATUS_OUT_OF_RESOURCES
    assert "session" not in h.log.names()


def test_quarantine_row_failure_answers_out_of_resources_and_removes_the_copy(
        settings: Settings) -> None:
    h = Harness(settings, commit_error=OperationalError("COMMIT", {}, Exception("db down")))
    broken = malformed_corpus()[0]
    status = h.service.store(h.received(broken.data_set, broken.sop_class, broken.sop_instance))
    assert status == STATUS_OUT_OF_RESOURCES
    assert list(settings.quarantine_dir.iterdir()) == []
