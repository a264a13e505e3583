"""`triage exams list|show`."""

from __future__ import annotations

import typer

from triage.cli.common import echo_json, handled_errors, open_database, settings_or_exit
from triage.db import queries

app = typer.Typer(no_args_is_help=True)


@app.command("list")
def list_(
    json_out: bool = typer.Option(False, "--json", help="machine-readable output"),
    status: str | None = typer.Option(None, help="only exams in this status"),
    limit: int = typer.Option(200, min=1),
) -> None:
    """Exams, newest first."""
    settings = settings_or_exit()
    with handled_errors():
        db = open_database(settings)
        with db.session() as session:
            exams = queries.list_exams(session, status=status, limit=limit)
    if json_out:
        echo_json([e.to_dict() for e in exams])
        return
    if not exams:
        typer.echo("no exams")
        return
    typer.echo(f"{'STUDY INSTANCE UID':<64}  {'STATUS':<10} {'VIEWS':<24} {'ACCESSION':<16} NOTE")
    for e in exams:
        note = e.skipped_reason or e.failure_reason or ("partial" if e.partial else "")
        typer.echo(f"{e.study_instance_uid:<64}  {e.status:<10} {','.join(e.views):<24} "
                   f"{','.join(e.accession_numbers):<16} {note}")


@app.command("show")
def show(
    study_uid: str = typer.Argument(..., help="Study Instance UID"),
    json_out: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """One exam with its instances, their classification and its status history."""
    settings = settings_or_exit()
    with handled_errors():
        db = open_database(settings)
        with db.session() as session:
            detail = queries.exam_detail(session, study_uid)
    if json_out:
        echo_json(detail)
        return
    for key in ("study_instance_uid", "status", "accession_numbers", "views", "partial",
                "skipped_reason", "failure_reason", "exam_score", "category"):
        typer.echo(f"{key:>20}: {detail[key]}")
    typer.echo("instances:")
    for i in detail["instances"]:
        flag = "scorable" if i["scorable"] else f"not scored: {i['reason']}"
        typer.echo(f"  {i['sop_instance_uid']}  {i['image_class']:<11} {i['laterality'] or '-'}-"
                   f"{i['view'] or '-':<4} {'chosen ' if i['chosen'] else ''}{flag}")
