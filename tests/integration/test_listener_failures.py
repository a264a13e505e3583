"""The listener under failure: killed mid-transfer, database down, disk full.

Each time: nothing half-written is counted as received, the sender is told to retry
(0xA700) or sees the association die, and the retry succeeds once the cause is gone.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.integration.listener_helpers import (
    MG_FOR_PRESENTATION,
    ListenerProcess,
    encode_data_set,
    image_dataset,
    send_raw,
    write_received_file,
)
from tests.servers import PG_BIN, PostgresServer
from triage.db import Association, Instance
from triage.dicom.spool import TEMP_PREFIX, dataset_digest
from triage.dicom.validate import STATUS_OUT_OF_RESOURCES, STATUS_SUCCESS

pytestmark = pytest.mark.skipif(shutil.which("storescu") is None, reason="DCMTK not installed")
DBT = "1.2.840.10008.5.1.4.1.1.13.1.3"


def a_file(tmp_path: Path, name: str, rows: int = 64, columns: int = 64, frames: int = 1,
           sop_class: str | None = None) -> Path:
    ds = image_dataset(rows, columns, sop_class=sop_class or MG_FOR_PRESENTATION)
    if frames > 1:
        ds.NumberOfFrames = frames
        ds.PixelData = bytes(range(256)) * (rows * columns * 2 * frames // 256)
    return write_received_file(tmp_path / name, encode_data_set(ds),
                               sop_class=str(ds.SOPClassUID), sop_instance=str(ds.SOPInstanceUID))


def rows_for(listener: ListenerProcess, sop_uid: str) -> list[Instance]:
    db = listener.database()
    try:
        with db.session() as session:
            return list(session.scalars(select(Instance)
                                        .where(Instance.sop_instance_uid == sop_uid)))
    finally:
        db.dispose()


def sop_uid(path: Path) -> str:
    from pydicom.filereader import read_file_meta_info

    return str(read_file_meta_info(path).MediaStorageSOPInstanceUID)


def temp_files(listener: ListenerProcess) -> list[Path]:
    return [p for p in (listener.data_dir / "spool" / "tmp").glob(f"{TEMP_PREFIX}*")]


def test_sigkill_mid_transfer_counts_nothing_and_the_retry_succeeds(tmp_path: Path) -> None:
    big = a_file(tmp_path, "dbt.dcm", 4096, 3328, frames=6, sop_class=DBT)  # about 160 MB
    listener = ListenerProcess(tmp_path / "data")
    listener.start()
    try:
        sender = subprocess.Popen(["storescu", "-R", "-aec", "TRIAGE", "127.0.0.1",
                                   str(listener.port), str(big)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(
                p.stat().st_size > 8 << 20 for p in temp_files(listener)):
            time.sleep(0.01)
        listener.kill()
        sender.wait(timeout=60)
        assert sender.returncode != 0, "the transfer finished before the kill: nothing tested"
        assert temp_files(listener), "the killed listener left its partial file behind"

        listener.start()
        assert temp_files(listener) == []  # removed at start-up, never recorded
        assert rows_for(listener, sop_uid(big)) == []
        db = listener.database()
        with db.session() as session:
            associations = session.scalars(select(Association)).all()
        db.dispose()
        stale = [a for a in associations if a.calling_ae == "STORESCU"]
        assert stale and all(not a.is_open and a.end_reason == "listener restarted"
                             for a in stale)

        retry = subprocess.run(["storescu", "-v", "-R", "-aec", "TRIAGE", "127.0.0.1",
                                str(listener.port), str(big)], capture_output=True, text=True,
                               timeout=300)
        assert retry.returncode == 0 and "Store Response (Success)" in retry.stderr
        (row,) = rows_for(listener, sop_uid(big))
        assert row.content_digest == dataset_digest(big)[0] == dataset_digest(Path(row.path))[0]
    finally:
        listener.stop()


def test_a_sender_dying_mid_transfer_leaves_no_partial_file_and_the_listener_serves_on(
        tmp_path: Path) -> None:
    big = a_file(tmp_path, "dbt.dcm", 4096, 3328, frames=6, sop_class=DBT)
    small = a_file(tmp_path, "small.dcm")
    listener = ListenerProcess(tmp_path / "data")
    listener.start()
    try:
        sender = subprocess.Popen(["storescu", "-R", "-aec", "TRIAGE", "127.0.0.1",
                                   str(listener.port), str(big)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(
                p.stat().st_size > 8 << 20 for p in temp_files(listener)):
            time.sleep(0.01)
        sender.kill()
        sender.wait(timeout=30)
        assert sender.returncode == -9
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and temp_files(listener):
            time.sleep(0.2)
        assert temp_files(listener) == []  # the partial file was removed while running
        assert rows_for(listener, sop_uid(big)) == []
        assert [r.status for r in send_raw([small], listener.destination())] == [STATUS_SUCCESS]
        db = listener.database()
        with db.session() as session:
            ended = session.scalars(select(Association)
                                    .where(Association.calling_ae == "STORESCU")).all()
        db.dispose()
        assert len(ended) == 1 and not ended[0].is_open
        assert ended[0].end_reason in ("aborted", "connection closed")
    finally:
        listener.stop()


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of this test alone, so that it can be stopped."""
    server = PostgresServer()
    server.start()
    yield server
    server.destroy()


def stop_postgres_now(server: PostgresServer) -> None:
    """Fast shutdown (clients disconnected), unlike a smart one that waits for our pool."""
    args = [str(PG_BIN / "pg_ctl"), "-D", str(server.datadir), "-m", "fast", "-w", "stop"]
    if os.geteuid() == 0:
        args = ["runuser", "-u", "postgres", "--", *args]
    subprocess.run(args, check=True, capture_output=True, timeout=60)
    if server.proc is not None:
        server.proc.wait(timeout=60)
        server.proc = None


def test_database_down_answers_out_of_resources_then_success_once_back(
        tmp_path: Path, own_postgres: PostgresServer) -> None:
    url = own_postgres.create_database("triage_listener")
    listener = ListenerProcess(tmp_path / "data", database_url=url)
    listener.start()
    try:
        first, second = a_file(tmp_path, "first.dcm"), a_file(tmp_path, "second.dcm")
        assert [r.status for r in send_raw([first], listener.destination())] == [STATUS_SUCCESS]

        stop_postgres_now(own_postgres)
        (refused,) = send_raw([second], listener.destination())
        assert refused.status == STATUS_OUT_OF_RESOURCES
        spooled = [p for p in (listener.data_dir / "spool").rglob("*.dcm")]
        assert len(spooled) == 1  # only the first object's file: nothing half-kept
        assert temp_files(listener) == []

        own_postgres.start()
        assert rows_for(listener, sop_uid(second)) == []  # no row from the refused attempt
        (retried,) = send_raw([second], listener.destination())
        assert retried.status == STATUS_SUCCESS
        (row,) = rows_for(listener, sop_uid(second))
        assert Path(row.path).exists() and row.content_digest == dataset_digest(second)[0]
        assert listener.proc is not None and listener.proc.poll() is None
    finally:
        listener.stop()


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True)
    return done.returncode == 0


def test_full_disk_answers_out_of_resources_then_success_once_space_is_there(
        tmp_path: Path) -> None:
    data = tmp_path / "data"
    if not _mount_tmpfs(data, "2m"):
        pytest.skip("needs root to mount a 2 MB tmpfs as the data directory")
    listener = ListenerProcess(data, database_url=f"sqlite:///{tmp_path / 'triage.db'}")
    try:
        listener.start()
        image = a_file(tmp_path, "large.dcm", 1536, 1024)  # 3 MB: more than the disk holds
        (refused,) = send_raw([image], listener.destination())
        assert refused.status == STATUS_OUT_OF_RESOURCES
        assert rows_for(listener, sop_uid(image)) == []
        assert temp_files(listener) == [] and list((data / "spool").rglob("*.dcm")) == []

        subprocess.run(["mount", "-o", "remount,size=32m", str(data)], check=True)
        (stored,) = send_raw([image], listener.destination())
        assert stored.status == STATUS_SUCCESS
        (row,) = rows_for(listener, sop_uid(image))
        assert row.content_digest == dataset_digest(image)[0]
        assert listener.proc is not None and listener.proc.poll() is None
    finally:
        listener.stop()
        subprocess.run(["umount", str(data)], capture_output=True)
