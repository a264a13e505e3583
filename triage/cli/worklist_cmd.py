"""`triage worklist`: exams by priority then arrival."""

from __future__ import annotations

import typer

from triage.cli.common import echo_json, handled_errors, open_database, settings_or_exit
from triage.db import queries
from triage.db.queries import WorklistEntry


def format_entry(e: WorklistEntry) -> str:
    score = "-" if e.score is None else f"{e.score:.3f}"
    line = (f"{e.category:<12} score {score:>6}  {e.status:<10} "
            f"{','.join(e.accession_numbers) or '-':<14} {e.study_instance_uid}")
    return f"{line}\n{'':<12} reason: {e.reason}" if e.reason else line


def worklist(json_out: bool = typer.Option(False, "--json", help="machine-readable output"),
             limit: int = typer.Option(500, min=1)) -> None:
    """Exams by priority, then arrival; NOT TRIAGED (with the reason) for unscored or
    unverified ones. Scores of unverified runs are shown for admins only."""
    settings = settings_or_exit()
    with handled_errors():
        db = open_database(settings)
        with db.session() as session:
            entries = queries.worklist(session, [p.name for p in settings.priorities], limit=limit)
    if json_out:
        echo_json([e.to_dict() for e in entries])
        return
    if not entries:
        typer.echo("worklist is empty")
    for e in entries:
        typer.echo(format_entry(e))
