"""Fixtures shared by every test layer."""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from triage.config import Settings, load_settings
from triage.db import Database, create_database

REPO_ROOT = Path(__file__).resolve().parents[1]


def fixtures_path() -> Path:
    """The shared reference fixtures (TRIAGE_FIXTURES, default ../shared/fixtures)."""
    return Path(os.environ.get("TRIAGE_FIXTURES", REPO_ROOT.parent / "shared" / "fixtures"))


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    path = fixtures_path()
    if not (path / "README.md").exists():
        pytest.fail(f"reference fixtures not found at {path}; set TRIAGE_FIXTURES")
    return path


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings on a fresh data dir with an SQLite database (embedded default)."""
    s = load_settings(data_dir=tmp_path / "data", quiet_seconds=1, max_wait_seconds=5)
    s.prepare_directories()
    return s


@pytest.fixture
def sqlite_db(settings: Settings) -> Iterator[Database]:
    """An SQLite database with the schema created by the Alembic migrations."""
    from triage.db.migrate import upgrade

    upgrade(settings.resolved_database_url)
    db = create_database(settings.resolved_database_url)
    yield db
    db.dispose()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """In CI a test skipped for a missing tool fails instead (tests/servers.py), in every
    test directory."""
    from tests.servers import fail_missing_tool_skip

    report = yield
    fail_missing_tool_skip(report)
    return report
