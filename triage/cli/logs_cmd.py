"""`triage logs --study UID [--json]`: one study's lines from the JSON log file."""

from __future__ import annotations

from pathlib import Path

import typer

from triage.cli.common import echo_json, handled_errors, settings_or_exit
from triage.logs import format_entry, log_files, study_lines


def logs(
    study: str = typer.Option(..., "--study", help="Study Instance UID"),
    files: list[Path] | None = typer.Option(
        None, "--file", help="log file to read (repeatable; default TRIAGE_LOG_FILE), with its "
        "rotated backups"),
    as_json: bool = typer.Option(False, "--json", help="print the entries as a JSON array"),
) -> None:
    """Print every log line that names the study (key study_instance_uid), oldest first,
    from the log file the product writes (TRIAGE_LOG_FILE) and its rotated backups."""
    settings = settings_or_exit()
    named = list(files or ([settings.log_file] if settings.log_file else []))
    if not named:
        typer.echo("error: no log file: set TRIAGE_LOG_FILE (the product then also writes its "
                   "log there as JSON lines) or pass --file PATH", err=True)
        raise typer.Exit(2)
    paths = [p for name in named for p in log_files(name)]
    if not paths:
        typer.echo(f"error: no log file at {', '.join(map(str, named))} (yet): the product "
                   "writes it once it runs with TRIAGE_LOG_FILE set", err=True)
        raise typer.Exit(1)
    with handled_errors():
        entries = list(study_lines(paths, study.strip()))
    if as_json:
        echo_json(entries)
        return
    for entry in entries:
        typer.echo(format_entry(entry))
    if not entries:
        typer.echo(f"no log lines name study {study} in {', '.join(map(str, paths))}", err=True)
