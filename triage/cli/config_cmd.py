"""`triage config show`."""

from __future__ import annotations

import typer

from triage.cli.common import echo_json, settings_or_exit

app = typer.Typer(no_args_is_help=True)


@app.command("show")
def show() -> None:
    """Print the effective settings (validated) with secrets masked."""
    echo_json(settings_or_exit().masked())
