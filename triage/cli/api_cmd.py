"""`triage api`: the HTTP API alone, in the foreground (``triage serve`` and ``triage listen``
also serve it)."""

from __future__ import annotations

import typer

from triage.cli.common import (
    configure_logging,
    handled_errors,
    open_database,
    settings_or_exit,
    stop_event_on_signals,
)
from triage.db import migrate


def api() -> None:
    """Serve the API on TRIAGE_API_HOST:TRIAGE_API_PORT (127.0.0.1:8080 by default) until
    Ctrl-C or SIGTERM. Every endpoint but /healthz needs a token (`triage tokens create`)."""
    from triage.api.server import ApiServer

    settings = settings_or_exit()
    configure_logging(settings)
    stop = stop_event_on_signals()
    with handled_errors():
        settings.prepare_directories()
        migrate.upgrade(settings.resolved_database_url)
        db = open_database(settings)
        server = ApiServer(settings, db)
        server.start()
    typer.echo(f"triage API on {server.url} (token required, /healthz open; OpenAPI schema "
               f"at {server.url}/openapi.json). Ctrl-C stops.")
    try:
        stop.wait()
    finally:
        server.stop()
        db.dispose()
        typer.echo("triage API stopped")
