"""The ``triage`` command. One module per command group; each face stays thin."""

from __future__ import annotations

import typer

from triage.cli import config_cmd, db_cmd, exams_cmd, models_cmd, serve_cmd, validate_cmd, worker_cmd

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Screening mammography worklist triage.")
app.add_typer(config_cmd.app, name="config", help="Show the effective settings.")
app.add_typer(db_cmd.app, name="db", help="Database schema migrations.")
app.add_typer(exams_cmd.app, name="exams", help="Exams known to the product.")
app.command("serve", help="Run the product in the foreground until Ctrl-C.")(serve_cmd.serve)
app.command("worker", help="Celery scoring worker (queue gpu).")(worker_cmd.worker)
# Command groups of later layers register here (one line each).
app.add_typer(models_cmd.app, name="models", help="Registered models and their weights.")
app.add_typer(validate_cmd.app, name="validate", help="Check numerics against references.")


def main() -> None:
    app()
