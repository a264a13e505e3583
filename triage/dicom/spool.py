"""The spool: received bytes kept durably on disk, and the quarantine for refused input.

Durability protocol ("store first, decide later", DESIGN.md):

1. the data set arrives in a temp file ``spool/tmp/rx-*.part`` (``ReceiveFile``), written
   straight from the network, never held whole in memory; its sha256 is computed while it
   is written;
2. ``Spool.keep``: fsync the temp file, rename it to its final path in the same file
   system, fsync the directory (and the parents it had to create);
3. only then the caller commits the DB row and answers success.

A temp file is never in the DB, so one left behind by a crash is never counted as received;
``Spool.remove_stale_temp_files`` deletes them at start-up (and periodically, for transfers
whose association died). ``ReceiveFile`` never raises from ``write``: a full disk is
recorded in ``ReceiveFile.error`` and the listener answers 0xA700 (out of resources).

All file-system calls go through a ``FileSystem`` object so that a unit test can record
their order.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import queue
import re
import struct
import tempfile
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

TEMP_PREFIX = "rx-"
TEMP_SUFFIX = ".part"
#: start the kernel's write-back every this many bytes, so the final fsync waits for little
WRITEBACK_CHUNK = 8 << 20
_META_HEADER = 132 + 12
_SAFE_NAME = re.compile(r"^[0-9.]{1,64}$")


class FileSystem(Protocol):
    """The file-system operations the spool needs, in the order it performs them."""

    def fsync_file(self, path: Path) -> None: ...

    def makedirs(self, path: Path) -> list[Path]: ...

    def rename(self, src: Path, dst: Path) -> None: ...

    def fsync_dir(self, path: Path) -> None: ...

    def unlink(self, path: Path) -> None: ...

    def write_file(self, path: Path, data: bytes) -> None: ...


class OsFileSystem:
    """The real file system (POSIX)."""

    def fsync_file(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def makedirs(self, path: Path) -> list[Path]:
        """Create ``path`` and missing parents; return the ones created, outermost first."""
        missing: list[Path] = []
        probe = path
        while not probe.exists():
            missing.append(probe)
            probe = probe.parent
        for directory in reversed(missing):
            try:
                directory.mkdir()
            except FileExistsError:  # another association created it meanwhile
                continue
        return list(reversed(missing))

    def rename(self, src: Path, dst: Path) -> None:
        os.rename(src, dst)

    def fsync_dir(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def unlink(self, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    def write_file(self, path: Path, data: bytes) -> None:
        """Write a new file durably: temp file, fsync, rename (the caller fsyncs the dir)."""
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            self.unlink(tmp)
            raise
        os.close(fd)
        os.rename(tmp, path)


class ReceiveFile:
    """A temp file a C-STORE data set is written into as it arrives from the network.

    Quacks like the ``NamedTemporaryFile`` pynetdicom writes received data sets into
    (``name``, ``write``, ``file.flush``, ``close``). ``write`` only queues the fragment: a
    writer thread writes it (unbuffered) and feeds the sha256 of the bytes after the File
    Meta Information group, so the network thread goes back to reading while the previous
    fragment is written and hashed. ``finish`` waits until everything queued is written.
    ``write`` never raises: the first OSError is kept in ``error`` and later fragments are
    dropped. With ``background=False`` each write happens in the caller's thread.
    """

    QUEUE_FRAGMENTS = 8  # at most this many fragments (one PDU each) wait for the writer

    def __init__(self, fd: int, name: str, *, background: bool = True) -> None:
        self.name = name
        self.file = self  # pynetdicom calls ``file.flush()`` after each fragment
        self.error: OSError | None = None
        self.size = 0
        self.owner = threading.current_thread()
        self.claimed = False
        self._fd: int | None = fd if fd >= 0 else None
        self._sha = hashlib.sha256()
        self._head = bytearray()
        self._data_start: int | None = None
        self._written_back = 0
        self._lock = threading.Lock()
        self._background = background
        self._queue: queue.Queue[bytes | bytearray | memoryview | None] = queue.Queue(
            self.QUEUE_FRAGMENTS)
        self._writer: threading.Thread | None = None

    @classmethod
    def create(cls, directory: Path, *, background: bool = True) -> ReceiveFile:
        """A new temp file in ``directory``; if that fails the error is kept, not raised."""
        try:
            fd, name = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX, dir=directory)
        except OSError as exc:
            rx = cls(-1, str(directory / f"{TEMP_PREFIX}unavailable-{uuid.uuid4().hex}"),
                     background=background)
            rx.error = exc
            return rx
        return cls(fd, name, background=background)

    @property
    def path(self) -> Path:
        return Path(self.name)

    @property
    def data_start(self) -> int | None:
        """Offset of the first data set byte (after the file meta group), once known."""
        return self._data_start

    def digest(self) -> str:
        """sha256 (hex) of the data set bytes after the File Meta Information group.

        Call ``finish`` first: until then fragments may still be waiting for the writer.
        """
        return self._sha.hexdigest()

    def write(self, data: bytes | bytearray | memoryview) -> int:
        count = len(data)
        if self.error is not None or self._fd is None:
            return count
        if not self._background:
            self._write_now(data)
            return count
        if self._writer is None:
            self._writer = threading.Thread(target=self._drain, name=f"rx-writer {self.name}",
                                            daemon=True)
            self._writer.start()
        self._queue.put(data)
        return count

    def _drain(self) -> None:
        while (data := self._queue.get()) is not None:
            self._write_now(data)

    def _write_now(self, data: bytes | bytearray | memoryview) -> None:
        if self.error is not None or self._fd is None:
            return
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
        except OSError as exc:
            self.error = exc
            return
        self._hash(data)
        self.size += len(data)
        if self.size - self._written_back >= WRITEBACK_CHUNK:
            self._start_writeback()

    def _hash(self, data: bytes | bytearray | memoryview) -> None:
        if self._data_start is not None:
            self._sha.update(data)
            return
        self._head += data
        if len(self._head) < _META_HEADER:
            return
        if self._head[128:132] == b"DICM" and self._head[132:136] == b"\x02\x00\x00\x00":
            self._data_start = _META_HEADER + int(struct.unpack_from("<L", self._head, 140)[0])
        else:  # not written by pynetdicom's file-meta writer: hash everything
            self._data_start = 0
        if len(self._head) > self._data_start:
            self._sha.update(bytes(self._head[self._data_start:]))
        self._head = bytearray()

    def _start_writeback(self) -> None:
        """Ask the kernel to start writing what we have (non-blocking), so fsync is short."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError, AttributeError):
            os.posix_fadvise(self._fd, self._written_back, self.size - self._written_back,
                             os.POSIX_FADV_DONTNEED)
        self._written_back = self.size

    def flush(self) -> None:
        """Nothing to do: durability comes from ``Spool.keep`` (fsync) after ``finish``."""

    def finish(self) -> None:
        """Wait until every queued fragment is written and hashed (idempotent)."""
        with self._lock:
            writer, self._writer = self._writer, None
        if writer is not None:
            self._queue.put(None)
            writer.join()

    def close(self) -> None:
        self.finish()
        with self._lock:
            if self._fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._fd)
                self._fd = None

    def discard(self) -> None:
        self.close()
        with contextlib.suppress(OSError):
            os.unlink(self.name)


class ReceiveRegistry:
    """The receive files of this process: the ones still arriving and the ones being handled.

    A file whose receiving thread died before a handler claimed it belonged to an aborted
    association: ``reap`` removes it.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._files: dict[str, ReceiveFile] = {}
        self._lock = threading.Lock()

    def create(self, *_args: Any, **_kwargs: Any) -> ReceiveFile:
        """Factory with ``NamedTemporaryFile``'s call shape (its arguments are ignored)."""
        rx = ReceiveFile.create(self.directory)
        with self._lock:
            self._files[rx.name] = rx
        return rx

    def claim(self, path: os.PathLike[str] | str) -> ReceiveFile | None:
        with self._lock:
            rx = self._files.get(os.fspath(path))
            if rx is not None:
                rx.claimed = True
            return rx

    def forget(self, rx: ReceiveFile) -> None:
        with self._lock:
            self._files.pop(rx.name, None)

    def names(self) -> set[str]:
        with self._lock:
            return set(self._files)

    def reap(self) -> int:
        """Discard unclaimed files whose receiving thread has ended; return how many."""
        with self._lock:
            dead = [rx for rx in self._files.values()
                    if not rx.claimed and not rx.owner.is_alive()]
            for rx in dead:
                del self._files[rx.name]
        for rx in dead:
            rx.discard()
            log.warning("removed the partial file of an association that ended mid-transfer",
                        extra={"path": rx.name, "bytes": rx.size})
        return len(dead)


def dataset_digest(path: Path, chunk: int = 4 << 20) -> tuple[str, int]:
    """sha256 of a DICOM file's data set bytes (after the file meta group) and their count.

    Gives the same digest ``ReceiveFile`` computes while receiving.
    """
    sha = hashlib.sha256()
    size = 0
    with open(path, "rb") as fp:
        head = fp.read(_META_HEADER)
        start = 0
        if len(head) == _META_HEADER and head[128:132] == b"DICM" \
                and head[132:136] == b"\x02\x00\x00\x00":
            start = _META_HEADER + int(struct.unpack_from("<L", head, 140)[0])
        fp.seek(start)
        while block := fp.read(chunk):
            sha.update(block)
            size += len(block)
    return sha.hexdigest(), size


def _safe(uid: str) -> str:
    """A UID as a file name; anything else (already refused by validation) is hashed."""
    return uid if _SAFE_NAME.match(uid) else hashlib.sha256(uid.encode()).hexdigest()[:32]


class Spool:
    """Paths and durable moves under ``spool_dir`` and ``quarantine_dir``."""

    def __init__(self, spool_dir: Path, quarantine_dir: Path,
                 fs: FileSystem | None = None) -> None:
        self.spool_dir = spool_dir
        self.quarantine_dir = quarantine_dir
        self.tmp_dir = (spool_dir / "tmp").absolute()
        self.fs: FileSystem = fs or OsFileSystem()

    def prepare(self) -> None:
        for directory in (self.spool_dir, self.tmp_dir, self.quarantine_dir):
            directory.mkdir(parents=True, exist_ok=True)

    def final_path(self, study_uid: str, sop_uid: str, digest: str) -> Path:
        """``spool/<study>/<sop>.<digest16>.<unique>.dcm``: never an existing file."""
        unique = uuid.uuid4().hex[:8]
        return self.spool_dir / _safe(study_uid) / f"{_safe(sop_uid)}.{digest[:16]}.{unique}.dcm"

    def keep(self, received: Path, final: Path) -> None:
        """fsync ``received``, rename it to ``final``, fsync the directories involved."""
        self.fs.fsync_file(received)
        created = self.fs.makedirs(final.parent)
        self.fs.rename(received, final)
        self.fs.fsync_dir(final.parent)
        for directory in reversed(created):  # innermost first, each entry in its parent
            self.fs.fsync_dir(directory.parent)

    def discard(self, path: Path) -> None:
        """Remove a file (best effort: a failure is logged, never raised)."""
        try:
            self.fs.unlink(path)
        except OSError as exc:
            log.error("cannot remove spool file", extra={"path": str(path), "error": str(exc)})

    def quarantine(self, received: Path, sidecar: dict[str, Any]) -> Path:
        """Move the received bytes into quarantine with a JSON sidecar; return the new path."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        target = self.quarantine_dir / f"{stamp}-{uuid.uuid4().hex[:12]}.dcm"
        self.fs.fsync_file(received)
        self.fs.makedirs(self.quarantine_dir)
        self.fs.rename(received, target)
        payload = dict(sidecar, file=target.name)
        self.fs.write_file(sidecar_path(target),
                           json.dumps(payload, indent=2, sort_keys=True, default=str).encode())
        self.fs.fsync_dir(self.quarantine_dir)
        return target

    def remove_stale_temp_files(self) -> int:
        """Delete every temp file: call at start-up, before any association is accepted.

        While the listener runs, ``ReceiveRegistry.reap`` removes the partial files of
        associations that died; this must not run then (it would delete live transfers).
        """
        removed = 0
        try:
            entries = list(os.scandir(self.tmp_dir))
        except FileNotFoundError:
            return 0
        for entry in entries:
            if not entry.name.startswith(TEMP_PREFIX):
                continue
            try:
                os.unlink(entry.path)
                removed += 1
            except OSError as exc:
                log.error("cannot remove stale temp file",
                          extra={"path": entry.path, "error": str(exc)})
        if removed:
            log.warning("removed stale temp files (never recorded as received)",
                        extra={"count": removed, "directory": str(self.tmp_dir)})
        return removed


def sidecar_path(quarantined: Path) -> Path:
    return quarantined.with_name(quarantined.name + ".json")
