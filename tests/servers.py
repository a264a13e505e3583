"""Real servers for integration tests, started on 127.0.0.1 and stopped by PID.

PostgreSQL (initdb as the ``postgres`` user in a temp dir), Redis and Orthanc. Each
class starts its server on a free port, waits until it answers and stops it with
SIGTERM (then SIGKILL) on the PID it started; nothing else is ever signalled.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def stop_pid(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def _as_postgres(args: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *args]
    return args


@dataclass
class PostgresServer:
    """A throw-away PostgreSQL cluster; ``url`` is a SQLAlchemy URL (psycopg 3)."""

    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="triage-pg-")))
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    def url(self, dbname: str = "triage") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{dbname}"

    def init(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        subprocess.run(
            _as_postgres([str(PG_BIN / "initdb"), "-D", str(self.datadir), "-A", "trust",
                          "-U", "postgres", "--no-sync", "-E", "UTF8"]),
            check=True, capture_output=True,
        )

    def start(self) -> None:
        if not self.datadir.exists():
            self.init()
        self.proc = subprocess.Popen(
            _as_postgres([str(PG_BIN / "postgres"), "-D", str(self.datadir), "-p", str(self.port),
                          "-h", "127.0.0.1", "-k", str(self.root), "-c", "fsync=off",
                          "-c", "full_page_writes=off"]),
            stdout=subprocess.DEVNULL, stderr=open(self.root / "postgres.log", "ab"),
        )
        wait_for_port(self.port, proc=self.proc)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            r = subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                                "-d", "postgres", "-tAc", "SELECT 1"], capture_output=True)
            if r.returncode == 0:
                return
            time.sleep(0.2)
        raise TimeoutError("PostgreSQL did not accept queries")

    def create_database(self, name: str) -> str:
        subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d",
                        "postgres", "-c", f'DROP DATABASE IF EXISTS "{name}"', "-c",
                        f'CREATE DATABASE "{name}"'], check=True, capture_output=True)
        return self.url(name)

    def stop(self) -> None:
        if self.proc is not None:
            stop_pid(self.proc)
            self.proc = None

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class RedisServer:
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="triage-redis-")))
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.root)],
            stdout=open(self.root / "redis.log", "ab"), stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port, proc=self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            stop_pid(self.proc)
            self.proc = None

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class OrthancServer:
    """Orthanc as the archive: DICOM on ``dicom_port``, REST on ``http_port``."""

    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="triage-orthanc-")))
    dicom_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    ae_title: str = "ORTHANC"
    modalities: dict[str, list[object]] = field(default_factory=dict)
    forward_to: str | None = None  # a modality name: route everything received there (Lua)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def rest(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def _write_config(self) -> Path:
        config = {
            "Name": "triage-test-archive",
            "StorageDirectory": str(self.root / "storage"),
            "IndexDirectory": str(self.root / "index"),
            "DicomAet": self.ae_title,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True,
            "UnknownSopClassAccepted": True,
            "DicomModalities": self.modalities,
            "Plugins": [],
            "StableAge": 1,
        }
        if self.forward_to:
            lua = self.root / "forward.lua"
            lua.write_text(
                "function OnStoredInstance(instanceId, tags, metadata, origin)\n"
                f"  SendToModality(instanceId, '{self.forward_to}')\n"
                "end\n"
            )
            config["LuaScripts"] = [str(lua)]
        path = self.root / "orthanc.json"
        path.write_text(json.dumps(config, indent=2))
        return path

    def start(self) -> None:
        cfg = self._write_config()
        self.proc = subprocess.Popen(["Orthanc", str(cfg)],
                                     stdout=open(self.root / "orthanc.log", "ab"),
                                     stderr=subprocess.STDOUT)
        wait_for_port(self.http_port, proc=self.proc)
        wait_for_port(self.dicom_port, proc=self.proc)

    def get(self, path: str) -> object:
        with urllib.request.urlopen(self.rest + path, timeout=10) as resp:
            return json.loads(resp.read())

    def get_bytes(self, path: str) -> bytes:
        with urllib.request.urlopen(self.rest + path, timeout=30) as resp:
            return bytes(resp.read())

    def instances(self) -> list[dict[str, object]]:
        """Every stored instance with its main DICOM tags (SOPInstanceUID, SOPClassUID...)."""
        out = []
        for oid in self.get("/instances"):  # type: ignore[union-attr]
            out.append(self.get(f"/instances/{oid}/simplified-tags"))  # type: ignore[arg-type]
        return out  # type: ignore[return-value]

    def stop(self) -> None:
        if self.proc is not None:
            stop_pid(self.proc)
            self.proc = None

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
