"""Run the Alembic migrations in ``migrations/`` programmatically."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.exc import OperationalError

from triage.errors import DatabaseError

_PACKAGE = Path(__file__).resolve().parents[1]


def migrations_dir() -> Path:
    """The Alembic environment: ``migrations/`` of a checkout, else the wheel's copy.

    In a checkout (editable install included) ``migrations/`` sits beside the package, next
    to ``pyproject.toml``; the wheel installs the same files as ``triage/_migrations``
    (setup.py). The ``pyproject.toml`` check keeps an unrelated top-level ``migrations``
    directory in site-packages from being taken for ours.
    """
    checkout = _PACKAGE.parent
    candidates = [checkout / "migrations"] if (checkout / "pyproject.toml").is_file() else []
    candidates.append(_PACKAGE / "_migrations")
    for location in candidates:
        if (location / "env.py").is_file() and (location / "versions").is_dir():
            return location
    raise DatabaseError("Alembic migrations not found: looked in "
                        + ", ".join(str(c) for c in candidates))


def _config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


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
