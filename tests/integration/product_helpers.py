"""Running the product's own processes (`triage serve`, `listen`, `worker`) for tests.

Every process runs on 127.0.0.1 in its own session (so its whole group can be SIGKILLed),
with its own data dir; the reduced-resolution test member is configured (TRIAGE_TESTING=1).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from triage.config import Settings, load_settings
from triage.db import Database, ScoringRun, Study, create_database
from triage.models import ensure_demo_weights
from triage.synthetic import ExamSpec, generate_dbt_exam, generate_exam

TRIAGE = str(Path(sys.executable).with_name("triage"))
REPO_ROOT = Path(__file__).resolve().parents[2]
TEST_MEMBER = "gmic-testing-small"
TEST_ENSEMBLE = json.dumps([{"name": TEST_MEMBER, "weight": 1.0}])


def product_environment(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_")}
    env.update({
        "TRIAGE_DATA_DIR": str(data_dir), "TRIAGE_DICOM_HOST": "127.0.0.1",
        "TRIAGE_TESTING": "1", "TRIAGE_ALLOW_UNCALIBRATED": "1", "TRIAGE_ENSEMBLE": TEST_ENSEMBLE,
        "TRIAGE_QUIET_SECONDS": "1", "TRIAGE_LOG_JSON": "true", "TRIAGE_LOG_LEVEL": "INFO",
        "TRIAGE_DEVICE": "cpu", "TRIAGE_SEND_UNVERIFIED": "1",
        "TRIAGE_API_PORT": "0",  # serve and listen mount the API: a free port each
    })
    env.update(extra)
    return env


def settings_for(env: dict[str, str]) -> Settings:
    """The Settings the product processes see with ``env`` (read in this process)."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("TRIAGE_")}
    try:
        for k in saved:
            del os.environ[k]
        os.environ.update({k: v for k, v in env.items() if k.startswith("TRIAGE_")})
        return load_settings()
    finally:
        for k in [k for k in os.environ if k.startswith("TRIAGE_")]:
            del os.environ[k]
        os.environ.update(saved)


def prepare_data_dir(env: dict[str, str]) -> Settings:
    """Schema and seeded demo weights for the test member, before any process starts."""
    from triage.db.migrate import upgrade

    settings = settings_for(env)
    settings.prepare_directories()
    upgrade(settings.resolved_database_url)
    ensure_demo_weights(settings, [TEST_MEMBER])
    return settings


@dataclass
class ProductProcess:
    args: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [TRIAGE, *self.args]
        if any(k.startswith("FAULT_") for k in self.env):  # fault injection lives in tests
            command = [sys.executable, "-m", "tests.faults", *self.args]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(command, env=self.env, stdout=log, cwd=REPO_ROOT,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 60.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL the whole process group (a Celery worker and its pool children)."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def wait_until(predicate: Callable[[], Any], timeout: float, what: str,
               on_timeout: Callable[[], str] = lambda: "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}\n{on_timeout()}")


def exam_status(db: Database, study_uid: str) -> str | None:
    with db.session() as session:
        study = session.scalars(select(Study).where(Study.study_instance_uid == study_uid)).first()
        return study.status if study else None


def study_row(db: Database, study_uid: str) -> Study:
    with db.session() as session:
        study = session.scalars(select(Study).where(Study.study_instance_uid == study_uid)).one()
        session.expunge(study)
        return study


def runs_of(db: Database, study_uid: str) -> list[ScoringRun]:
    with db.session() as session:
        study = session.scalars(select(Study).where(Study.study_instance_uid == study_uid)).one()
        runs = list(session.scalars(select(ScoringRun).where(ScoringRun.study_id == study.id)))
        for r in runs:
            session.expunge(r)
        return runs


def small_exam(out_dir: Path, seed: int = 7) -> tuple[str, list[Path]]:
    """A synthetic 4-view exam at 1/4 matrix size (fast to send and score)."""
    summary = generate_exam(ExamSpec(seed=seed, lesion=True, scale=0.25), out_dir)
    return summary.study_instance_uid, [Path(p) for p in summary.files]


#: DBT slices of the end-to-end exam: few (CI time), each >= 1.2 Mpixel (1434x1165).
DBT_SLICES = 8


def small_dbt_exam(out_dir: Path, seed: int = 9) -> tuple[str, list[Path]]:
    """A synthetic 4-view tomosynthesis exam (Breast Tomosynthesis objects, one per view) of
    ``DBT_SLICES`` thin slices at half the detector matrix."""
    summary = generate_dbt_exam(ExamSpec(seed=seed, lesion=True, scale=0.5), out_dir,
                                slices=DBT_SLICES)
    return summary.study_instance_uid, [Path(p) for p in summary.files]


@dataclass
class Stack:
    """A data dir with its environment and the processes started on it."""

    root: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    processes: list[ProductProcess] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.data_dir = self.root / "data"
        self.env = product_environment(self.data_dir, **self.extra_env)
        self.settings = prepare_data_dir(self.env)
        self.db = create_database(self.settings.resolved_database_url)

    def spawn(self, *args: str, name: str | None = None, **env: str) -> ProductProcess:
        proc = ProductProcess(list(args), {**self.env, **env},
                              self.root / f"{name or args[0]}-{len(self.processes)}.log")
        proc.start()
        self.processes.append(proc)
        return proc

    def logs(self) -> str:
        return "\n".join(f"--- {p.log_path.name}\n{p.log()[-4000:]}" for p in self.processes)

    def close(self) -> None:
        for p in reversed(self.processes):
            p.stop()
        self.db.dispose()
        shutil.rmtree(self.root / "data" / "spool", ignore_errors=True)
