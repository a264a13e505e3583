"""`triage config show` and `triage config docs`."""

from __future__ import annotations

import typer

from triage.cli.common import echo_json, handled_errors, settings_or_exit
from triage.cli.settings_doc import settings_markdown
from triage.config import config_file_path, setting_sources, unknown_variables

app = typer.Typer(no_args_is_help=True)


@app.command("show")
def show() -> None:
    """Print the effective settings (validated) with secrets masked, the modes they make,
    where each value came from (sources) and TRIAGE_* variables that are no setting (unknown)."""
    settings = settings_or_exit()
    shown = settings.masked()
    with handled_errors():
        shown["sources"] = setting_sources(settings)
    shown["config_file"] = str(config_file_path() or "")
    shown["unknown"] = {name: {"did_you_mean": close}
                        for name, close in unknown_variables().items()}
    shown["modes"] = {
        "unverified_results": (
            "sent to the archive (TRIAGE_SEND_UNVERIFIED=1: testing and demo only)"
            if settings.send_unverified else
            "shadow mode: written to the local outputs folder and the DB only"),
        "partial_exams": "categorised " + (
            "PARTIAL" if settings.partial_policy.value == "partial" else "NOT TRIAGED"),
    }
    echo_json(shown)


@app.command("docs")
def docs() -> None:
    """Print the settings reference (docs/settings.md): every setting, its format, default
    and meaning."""
    typer.echo(settings_markdown(), nl=False)
