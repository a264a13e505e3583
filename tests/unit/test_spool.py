"""The spool keeps received bytes durably, in the right order, and cleans up after crashes."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import threading
from pathlib import Path

import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID

from triage.dicom.spool import (
    TEMP_PREFIX,
    OsFileSystem,
    ReceiveFile,
    ReceiveRegistry,
    Spool,
    dataset_digest,
    sidecar_path,
)


class RecordingFileSystem(OsFileSystem):
    """The real file system, recording each call in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def fsync_file(self, path: Path) -> None:
        self.calls.append(("fsync_file", str(path)))
        super().fsync_file(path)

    def makedirs(self, path: Path) -> list[Path]:
        created = super().makedirs(path)
        self.calls.extend(("mkdir", str(p)) for p in created)
        return created

    def rename(self, src: Path, dst: Path) -> None:
        self.calls.append(("rename", f"{src}->{dst}"))
        super().rename(src, dst)

    def fsync_dir(self, path: Path) -> None:
        self.calls.append(("fsync_dir", str(path)))
        super().fsync_dir(path)

    def unlink(self, path: Path) -> None:
        self.calls.append(("unlink", str(path)))
        super().unlink(path)

    def write_file(self, path: Path, data: bytes) -> None:
        self.calls.append(("write_file", str(path)))
        super().write_file(path, data)


def meta_header(sop_instance_uid: str = "1.2.3.4") -> bytes:
    """Preamble, DICM and a File Meta Information group, as pynetdicom writes them."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.7")
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.1")
    buffer = DicomBytesIO()
    buffer.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(buffer, meta)
    return buffer.getvalue()


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    s = Spool(tmp_path / "spool", tmp_path / "quarantine", RecordingFileSystem())
    s.prepare()
    return s


def received_file(spool: Spool, payload: bytes) -> Path:
    path = spool.tmp_dir / f"{TEMP_PREFIX}test.part"
    path.write_bytes(meta_header() + payload)
    return path


def test_keep_fsyncs_the_file_before_the_rename_and_the_directory_after(spool: Spool) -> None:
    received = received_file(spool, b"data set bytes")
    final = spool.final_path("1.2.3", "1.2.3.4", "ab" * 32)
    spool.keep(received, final)
    calls = spool.fs.calls  # type: ignore[attr-defined]
    names = [c[0] for c in calls]
    assert names.index("fsync_file") < names.index("rename") < names.index("fsync_dir")
    assert calls[names.index("fsync_file")][1] == str(received)
    assert calls[names.index("rename")][1] == f"{received}->{final}"
    assert ("fsync_dir", str(final.parent)) in calls
    assert final.read_bytes().endswith(b"data set bytes") and not received.exists()


def test_keep_fsyncs_each_directory_it_creates_in_its_parent(spool: Spool) -> None:
    received = received_file(spool, b"x")
    final = spool.final_path("1.2.3", "1.2.3.4", "cd" * 32)
    spool.keep(received, final)
    calls = spool.fs.calls  # type: ignore[attr-defined]
    assert ("mkdir", str(final.parent)) in calls
    # the new study directory's entry is made durable in the spool directory, after the rename
    rename_at = [c[0] for c in calls].index("rename")
    assert ("fsync_dir", str(final.parent.parent)) in calls[rename_at:]


def test_final_paths_are_unique_and_named_by_uids(spool: Spool) -> None:
    first = spool.final_path("1.2.3", "1.2.3.4", "ef" * 32)
    second = spool.final_path("1.2.3", "1.2.3.4", "ef" * 32)
    assert first != second
    assert first.parent.name == "1.2.3" and first.name.startswith("1.2.3.4.efefefef")


def test_a_uid_that_is_not_a_safe_file_name_is_hashed(spool: Spool) -> None:
    path = spool.final_path("../../etc", "1.2", "00" * 32)
    assert path.parent.parent == spool.spool_dir and ".." not in path.parent.name


def test_receive_file_digest_is_the_sha256_of_the_data_set_after_the_meta_group(
        tmp_path: Path) -> None:
    payload = os.urandom(300_000)
    rx = ReceiveFile.create(tmp_path)
    head = meta_header()
    # written the way pynetdicom writes: preamble, DICM, meta group, then fragments
    rx.write(head[:128])
    rx.write(head[128:132])
    rx.write(head[132:])
    for start in range(0, len(payload), 65_536):
        rx.write(payload[start:start + 65_536])
    rx.close()
    assert rx.error is None
    assert rx.digest() == hashlib.sha256(payload).hexdigest()
    assert rx.size == len(head) + len(payload) == rx.path.stat().st_size
    assert dataset_digest(rx.path) == (rx.digest(), len(payload))
    assert rx.data_start == len(head)


def test_receive_file_written_in_the_callers_thread_gives_the_same_digest(
        tmp_path: Path) -> None:
    payload = os.urandom(50_000)
    rx = ReceiveFile.create(tmp_path, background=False)
    rx.write(meta_header() + payload[:10])
    rx.write(payload[10:])
    rx.close()
    assert rx.digest() == hashlib.sha256(payload).hexdigest()


@pytest.mark.parametrize("background", [True, False])
def test_receive_file_keeps_a_full_disk_error_instead_of_raising(background: bool) -> None:
    fd = os.open("/dev/full", os.O_WRONLY)
    rx = ReceiveFile(fd, "/dev/full", background=background)
    assert rx.write(b"x" * 4096) == 4096  # pynetdicom must not see an exception
    assert rx.write(b"y" * 10) == 10
    rx.close()
    assert rx.error is not None and rx.error.errno == errno.ENOSPC
    assert rx.size == 0


def test_receive_file_that_cannot_be_created_reports_the_error(tmp_path: Path) -> None:
    rx = ReceiveFile.create(tmp_path / "missing-directory")
    assert rx.write(b"abc") == 3
    rx.close()
    assert isinstance(rx.error, FileNotFoundError)


def test_stale_temp_files_are_removed_and_nothing_else(spool: Spool) -> None:
    stale = [spool.tmp_dir / f"{TEMP_PREFIX}{i}.part" for i in range(3)]
    for p in stale:
        p.write_bytes(b"partial")
    other = spool.tmp_dir / "README"
    other.write_text("keep me")
    assert spool.remove_stale_temp_files() == 3
    assert not any(p.exists() for p in stale) and other.exists()


def test_registry_reaps_unclaimed_files_of_ended_threads_only(tmp_path: Path) -> None:
    registry = ReceiveRegistry(tmp_path)
    made: list[ReceiveFile] = []
    worker = threading.Thread(target=lambda: made.append(registry.create(delete=False)))
    worker.start()
    worker.join()
    dead_unclaimed = made[0]
    dead_unclaimed.write(b"partial data set")
    claimed = registry.create()  # made in this (live) thread, then claimed
    assert registry.claim(claimed.path) is claimed
    alive = registry.create()
    assert registry.reap() == 1
    assert not dead_unclaimed.path.exists()
    assert claimed.path.exists() and alive.path.exists()
    assert registry.names() == {claimed.name, alive.name}
    for rx in (claimed, alive):
        rx.discard()


def test_quarantine_moves_the_bytes_and_writes_a_sidecar(spool: Spool) -> None:
    received = received_file(spool, b"broken")
    original = received.read_bytes()
    target = spool.quarantine(received, {"reason": "truncated", "status": "0xC001"})
    assert target.parent == spool.quarantine_dir and target.read_bytes() == original
    sidecar = json.loads(sidecar_path(target).read_text())
    assert sidecar["reason"] == "truncated" and sidecar["file"] == target.name
    names = [c[0] for c in spool.fs.calls]  # type: ignore[attr-defined]
    assert names.index("fsync_file") < names.index("rename") < names.index("write_file") \
        < names.index("fsync_dir")
