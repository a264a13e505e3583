"""Run the Alembic migrations in ``migrations/`` programmatically."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.exc import OperationalError

from triage.errors import DatabaseError

#: migrations/ sits next to the package in a checkout; an installed wheel carries a copy.
_CANDIDATES = (
    Path(__file__).resolve().parents[2] / "migrations",
    Path(__file__).resolve().parent / "migrations",
)


def _config(url: str) -> Config:
    for location in _CANDIDATES:
        if (location / "env.py").exists():
            cfg = Config()
            cfg.set_main_option("script_location", str(location))
            cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
            return cfg
    raise DatabaseError("Alembic migrations directory not found next to the triage package")


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the schema at ``url`` up to ``revision``."""
    try:
        command.upgrade(_config(url), revision)
    except OperationalError as exc:
        raise DatabaseError(f"migration failed, database not reachable or locked: {exc.orig}") from exc


def downgrade(url: str, revision: str = "base") -> None:
    """Take the schema at ``url`` down to ``revision`` (default: empty)."""
    try:
        command.downgrade(_config(url), revision)
    except OperationalError as exc:
        raise DatabaseError(f"migration failed, database not reachable or locked: {exc.orig}") from exc


def current(url: str) -> str | None:
    """The revision the database is at (None when never migrated)."""
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import create_engine

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
