"""`triage config show`."""

from __future__ import annotations

import typer

from triage.cli.common import echo_json, settings_or_exit

app = typer.Typer(no_args_is_help=True)


@app.command("show")
def show() -> None:
    """Print the effective settings (validated) with secrets masked, and the modes they make."""
    settings = settings_or_exit()
    shown = settings.masked()
    shown["modes"] = {
        "unverified_results": (
            "sent to the archive (TRIAGE_SEND_UNVERIFIED=1: testing and demo only)"
            if settings.send_unverified else
            "shadow mode: written to the local outputs folder and the DB only"),
        "partial_exams": "categorised " + (
            "PARTIAL" if settings.partial_policy.value == "partial" else "NOT TRIAGED"),
    }
    echo_json(shown)
