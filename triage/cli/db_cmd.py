"""`triage db upgrade|downgrade|current`."""

from __future__ import annotations

import typer

from triage.cli.common import handled_errors, settings_or_exit
from triage.db import migrate

app = typer.Typer(no_args_is_help=True)


@app.command("upgrade")
def upgrade(revision: str = typer.Argument("head")) -> None:
    """Create or migrate the schema to REVISION (default: the newest)."""
    settings = settings_or_exit()
    with handled_errors():
        settings.prepare_directories()
        migrate.upgrade(settings.resolved_database_url, revision)
        typer.echo(f"database at revision {migrate.current(settings.resolved_database_url)}")


@app.command("downgrade")
def downgrade(revision: str = typer.Argument(..., help="target revision, or 'base' for empty")) -> None:
    """Take the schema back to REVISION."""
    settings = settings_or_exit()
    with handled_errors():
        migrate.downgrade(settings.resolved_database_url, revision)
        typer.echo(f"database at revision {migrate.current(settings.resolved_database_url)}")


@app.command("current")
def current() -> None:
    """Print the schema revision of the database."""
    settings = settings_or_exit()
    with handled_errors():
        typer.echo(migrate.current(settings.resolved_database_url) or "empty (run `triage db upgrade`)")
