"""Real servers for integration tests, started on 127.0.0.1 and stopped by PID.

PostgreSQL (initdb as the ``postgres`` user in a temp dir), Redis and Orthanc. Each
class starts its server on a free port, waits until it answers and stops it with
SIGTERM (then SIGKILL) on the PID it started; nothing else is ever signalled.

A server or tool the tests need that is not installed skips those tests on a workstation
and fails them in CI (``CI=true``), naming the tool and how to install it: CI must not go
green by skipping (``require_tools``, and ``fail_missing_tool_skip`` for the ``skipif``
marks test modules carry).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest


def _pg_bin() -> Path:
    """Debian's server binaries (initdb, postgres): the newest installed major version."""
    found = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/initdb")]
    found.sort(key=lambda b: int(b.parent.name) if b.parent.name.isdigit() else 0)
    return found[-1] if found else Path("/usr/lib/postgresql/15/bin")


PG_BIN = _pg_bin()

#: every program the integration and e2e tests run -> what provides it and how to install it
#: (``make test`` installs all of them: Makefile SYSTEM_PACKAGES).
TOOLS: dict[str, tuple[str, str]] = {
    "storescu": ("DCMTK", "apt-get install dcmtk"),
    "dsr2xml": ("DCMTK", "apt-get install dcmtk"),
    "dciodvfy": ("dicom3tools", "apt-get install dicom3tools"),
    "Orthanc": ("Orthanc", "apt-get install orthanc"),
    "redis-server": ("Redis", "apt-get install redis-server"),
    "initdb": ("PostgreSQL", "apt-get install postgresql"),
    "postgres": ("PostgreSQL", "apt-get install postgresql"),
    "psql": ("PostgreSQL", "apt-get install postgresql"),
    "make": ("make", "apt-get install make"),
}
_PG_SERVER_TOOLS = ("initdb", "postgres")


def in_ci(environ: Mapping[str, str] | None = None) -> bool:
    """True when the ``CI`` variable says so (``true``, any case, or ``1``)."""
    value = (os.environ if environ is None else environ).get("CI", "")
    return value.strip().lower() in ("true", "1")


def tool_path(name: str) -> str | None:
    """Where ``name`` is installed: PATH, or Debian's PostgreSQL bin dir for the server."""
    if name in _PG_SERVER_TOOLS and (PG_BIN / name).is_file():
        return str(PG_BIN / name)
    return shutil.which(name)


def missing_tool_message(names: list[str]) -> str:
    hints = {f"{TOOLS[n][0]} ({TOOLS[n][1]})" if n in TOOLS else n: None for n in names}
    return (f"{', '.join(names)} not installed: install {', '.join(hints)}; "
            "`make test` installs every tool the tests use")


def require_tools(*names: str, environ: Mapping[str, str] | None = None,
                  which: Callable[[str], str | None] | None = None) -> None:
    """Skip the calling test when a tool is missing; fail it instead in CI."""
    which = which or tool_path
    missing = [n for n in names if which(n) is None]
    if not missing:
        return
    message = missing_tool_message(missing)
    if in_ci(environ):
        pytest.fail(f"{message} (CI=true: a missing tool fails the run instead of skipping)",
                    pytrace=False)
    pytest.skip(message)


_MISSING = re.compile(r"not installed|not found|missing|no such file", re.IGNORECASE)


def tool_named_in(reason: str) -> str | None:
    """The tool (or the package providing it) a skip reason says is missing, if any."""
    if not _MISSING.search(reason):
        return None
    words = set(reason.replace("(", " ").replace(")", " ").replace(",", " ").split())
    for name, (provider, _) in TOOLS.items():
        if name in words:
            return name
        if provider in words:
            return next(n for n, (p, _) in TOOLS.items() if p == provider)
    return None


def fail_missing_tool_skip(report: pytest.TestReport,
                           environ: Mapping[str, str] | None = None) -> None:
    """In CI, turn a test skipped because a tool is missing into a failure (in place).

    Called from the integration and e2e conftests' ``pytest_runtest_makereport``: the
    ``skipif(shutil.which(...) is None, reason="DCMTK not installed")`` marks of test
    modules stay as they are and still skip on a workstation.
    """
    if not report.skipped or hasattr(report, "wasxfail") or not in_ci(environ):
        return
    longrepr = report.longrepr
    reason = str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    tool = tool_named_in(reason)
    if tool is None:
        return
    reason = reason.removeprefix("Skipped: ")
    report.outcome = "failed"
    report.longrepr = (f"{reason}: install {TOOLS[tool][0]} ({TOOLS[tool][1]}); CI=true, so a "
                       "missing tool fails the run instead of skipping")


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
        require_tools("initdb", "postgres", "psql")
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        subprocess.run(
            _as_postgres([str(tool_path("initdb")), "-D", str(self.datadir), "-A", "trust",
                          "-U", "postgres", "--no-sync", "-E", "UTF8"]),
            check=True, capture_output=True,
        )

    def start(self) -> None:
        require_tools("initdb", "postgres", "psql")
        if not self.datadir.exists():
            self.init()
        self.proc = subprocess.Popen(
            _as_postgres([str(tool_path("postgres")), "-D", str(self.datadir), "-p", str(self.port),
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
        require_tools("redis-server")
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
        require_tools("Orthanc")
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
        oids = self.get("/instances")
        assert isinstance(oids, list)
        out = []
        for oid in oids:
            tags = self.get(f"/instances/{oid}/simplified-tags")
            assert isinstance(tags, dict)
            out.append(tags)
        return out

    def stop(self) -> None:
        if self.proc is not None:
            stop_pid(self.proc)
            self.proc = None

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
