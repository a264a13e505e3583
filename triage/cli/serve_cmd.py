"""`triage serve`: the product on one machine (embedded default), in the foreground."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

import typer

from triage.cli.common import configure_logging, echo_json, handled_errors, settings_or_exit
from triage.db import migrate

log = logging.getLogger(__name__)


def serve() -> None:
    """Create/migrate the database, report the settings and serve until Ctrl-C."""
    settings = settings_or_exit()
    configure_logging(settings)
    stop = threading.Event()

    def _stop(signum: int, _frame: FrameType | None) -> None:
        log.info("stopping", extra={"signal": signal.Signals(signum).name})
        stop.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    with handled_errors():
        settings.prepare_directories()
        migrate.upgrade(settings.resolved_database_url)
    typer.echo("triage is running on its embedded default with these settings:")
    echo_json(settings.masked())
    typer.echo("press Ctrl-C to stop")
    stop.wait()
    typer.echo("triage stopped")
