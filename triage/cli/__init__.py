"""The ``triage`` command. One module per command group; each face stays thin."""

from __future__ import annotations

import typer

from triage.cli import (
    api_cmd,
    audit_cmd,
    config_cmd,
    db_cmd,
    demo_cmd,
    exams_cmd,
    listen_cmd,
    logs_cmd,
    models_cmd,
    outbox_cmd,
    score_folder_cmd,
    scores_cmd,
    serve_cmd,
    synthetic_cmd,
    tokens_cmd,
    validate_cmd,
    worker_cmd,
    worklist_cmd,
)
from triage.cli.common import GuardedGroup, print_version

app = typer.Typer(no_args_is_help=True, add_completion=False, cls=GuardedGroup,
                  help="Screening mammography worklist triage.")


@app.callback()
def _root(version: bool = typer.Option(False, "--version", is_eager=True, callback=print_version,
                                       help="Print the version and exit.")) -> None:
    """Screening mammography worklist triage."""


app.add_typer(config_cmd.app, name="config", help="Show the effective settings.")
app.add_typer(db_cmd.app, name="db", help="Database schema migrations.")
app.add_typer(exams_cmd.app, name="exams", help="Exams known to the product.")
app.command("serve", help="Run the product in the foreground until Ctrl-C.")(serve_cmd.serve)
app.command("worker", help="Celery scoring worker (queue gpu).")(worker_cmd.worker)
# Command groups of later layers register here (one line each).
app.command("listen", help="DICOM listener (C-STORE SCP) until Ctrl-C.")(listen_cmd.listen)
app.command("send", help="Send DICOM files as stored (C-STORE SCU).")(listen_cmd.send)
app.add_typer(synthetic_cmd.app, name="synthetic", help="Synthetic screening exams (DICOM).")
app.add_typer(models_cmd.app, name="models", help="Registered models and their weights.")
app.add_typer(validate_cmd.app, name="validate", help="Check numerics against references.")
app.add_typer(outbox_cmd.app, name="outbox", help="Results waiting for, sent to or refused by the archive.")
app.command("worklist", help="Exams by priority, then arrival.")(worklist_cmd.worklist)
app.command("demo", help="Send a synthetic screening exam to a listener.")(demo_cmd.demo)
app.command("score-folder", help="Score a folder of DICOM files offline.")(
    score_folder_cmd.score_folder_cmd)
app.command("logs", help="One study's lines from the log file (TRIAGE_LOG_FILE).")(logs_cmd.logs)
app.add_typer(scores_cmd.app, name="scores", help="Score history: every finished scoring run.")
app.add_typer(tokens_cmd.app, name="tokens", help="API tokens (viewer, admin).")
app.command("audit", help="Who read score history and exam details.")(audit_cmd.audit)
app.command("api", help="Run the HTTP API alone until Ctrl-C.")(api_cmd.api)


def main() -> None:
    app()
