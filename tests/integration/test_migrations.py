"""Alembic migrations: upgrade -> downgrade -> upgrade on SQLite and on real PostgreSQL,
and the migrated schema matches the ORM models."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from triage.db.migrate import current, downgrade, upgrade
from triage.db.models import Base


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'm.db'}"
    return str(request.getfixturevalue("postgres_url"))


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade_round_trip(db_url: str) -> None:
    upgrade(db_url)
    assert _tables(db_url) == set(Base.metadata.tables)
    downgrade(db_url, "base")
    assert _tables(db_url) == set() and current(db_url) is None
    upgrade(db_url)
    assert current(db_url) is not None and _tables(db_url) == set(Base.metadata.tables)


def test_migrated_schema_matches_the_orm_models(db_url: str) -> None:
    upgrade(db_url)
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()
    assert diff == [], f"models and migrations differ: {diff}"
