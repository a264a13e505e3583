"""`triage listen` (the DICOM listener) and `triage send` (C-STORE files to an AE)."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from triage.cli.common import (
    configure_logging,
    handled_errors,
    open_database,
    settings_or_exit,
    stop_event_on_signals,
)
from triage.config import Destination, validate_ae_title
from triage.db import migrate

log = logging.getLogger(__name__)


def listen() -> None:
    """Receive images over DICOM (C-STORE, C-ECHO) until SIGTERM or Ctrl-C.

    Host, port, AE title and allowed calling AE titles come from the settings
    (TRIAGE_DICOM_HOST, TRIAGE_DICOM_PORT, TRIAGE_AE_TITLE, TRIAGE_ALLOWED_CALLING_AETS).
    """
    from triage.service import Services

    settings = settings_or_exit()
    configure_logging(settings)
    stop = stop_event_on_signals()
    with handled_errors():
        settings.prepare_directories()
        migrate.upgrade(settings.resolved_database_url)
        # the listener plus the dispatcher/reconciler and the outbox sender; scoring is
        # done by `triage worker` (broker) -- `triage serve` adds the embedded worker
        listener = Services(settings, open_database(settings), embedded_worker=False)
        listener.start()
    host, port = listener.address
    typer.echo(f"listening as {settings.ae_title} on {host}:{port}; API on {listener.api_url}",
               err=True)
    try:
        stop.wait()
    finally:
        listener.stop()


def send(
    paths: list[Path] = typer.Argument(..., exists=True, help="DICOM files or directories"),
    host: str = typer.Option(..., help="destination host"),
    port: int = typer.Option(..., min=1, max=65535, help="destination port"),
    called_aet: str = typer.Option(..., "--called-aet", help="destination AE title"),
    calling_aet: str | None = typer.Option(
        None, "--calling-aet", help="our AE title (default: TRIAGE_AE_TITLE)"),
    timeout: float = typer.Option(60.0, min=1, help="network timeout in seconds"),
) -> None:
    """Send DICOM files as stored (no transcoding); exit 1 if any was not stored."""
    from triage.dicom.sender import expand_paths, send_files

    settings = settings_or_exit()
    configure_logging(settings)
    try:
        destination = Destination(ae_title=validate_ae_title(called_aet, "--called-aet"),
                                  host=host, port=port)
        calling = validate_ae_title(calling_aet or settings.ae_title, "--calling-aet")
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    files = expand_paths(paths)
    if not files:
        typer.echo("error: no files to send", err=True)
        raise typer.Exit(2)
    results = send_files(files, destination, calling, timeout=timeout)
    for r in results:
        typer.echo(f"{r.status_text:>6}  {r.outcome.value:<9}  {r.path}  {r.message}")
    failed = [r for r in results if not r.stored]
    typer.echo(f"{len(results) - len(failed)} of {len(results)} stored at {destination}")
    if failed:
        raise typer.Exit(1)
