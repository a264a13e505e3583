"""Session-wide real servers for integration tests.

A server or tool that is not installed skips the tests needing it, except in CI
(``CI=true``) where it fails them with the tool's name and how to install it
(tests/servers.py: ``require_tools``, ``fail_missing_tool_skip``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.servers import OrthancServer, PostgresServer, RedisServer


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    server.start()
    yield server
    server.destroy()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A fresh, empty database on the session's PostgreSQL server."""
    return postgres_server.create_database(f"t_{uuid.uuid4().hex[:12]}")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.destroy()


@pytest.fixture
def orthanc() -> Iterator[OrthancServer]:
    server = OrthancServer()
    server.start()
    yield server
    server.destroy()
