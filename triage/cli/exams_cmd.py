"""`triage exams list|show|release`."""

from __future__ import annotations

import getpass

import typer

from triage.cli.common import echo_json, handled_errors, open_database, settings_or_exit
from triage.db import queries
from triage.db.models import utcnow
from triage.exams.hold import release as release_exam

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
        note = (e.hold_reason or e.skipped_reason or e.failure_reason
                or ("partial" if e.partial else ""))
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
    for key in ("study_instance_uid", "status", "hold_reason", "accession_numbers", "views",
                "partial", "skipped_reason", "failure_reason", "exam_score", "category"):
        typer.echo(f"{key:>20}: {detail[key]}")
    typer.echo("instances:")
    for i in detail["instances"]:
        flag = "scorable" if i["scorable"] else f"not scored: {i['reason']}"
        typer.echo(f"  {i['sop_instance_uid']}  {i['image_class']:<11} {i['laterality'] or '-'}-"
                   f"{i['view'] or '-':<4} {'chosen ' if i['chosen'] else ''}{flag}")


def _operator() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name for this uid (e.g. some containers)
        return "unknown operator"


@app.command("release")
def release(
    study_uid: str = typer.Argument(..., help="Study Instance UID of the held exam"),
    reason: str = typer.Option(..., help="what was corrected (kept in the audit log)"),
    by: str | None = typer.Option(None, help="who releases it (default: the OS user)"),
) -> None:
    """Release a held exam once its data is corrected: it is assembled again from its
    images; images stored as patient identity conflicts stay excluded (audited)."""
    settings = settings_or_exit()
    with handled_errors():
        db = open_database(settings)
        with db.session() as session:
            done = release_exam(session, study_uid, reason=reason, by=by or _operator(),
                                now=utcnow())
    typer.echo(f"exam {done.study_instance_uid} released: receiving again, "
               f"{done.chosen_instances} image(s) chosen, {done.excluded_instances} excluded "
               "as patient identity conflicts; the readiness rules decide when it is scored")
