"""`triage outbox list|retry`: what results are waiting, sent or refused, and re-sending."""

from __future__ import annotations

import typer

from triage.cli.common import echo_json, handled_errors, open_database, settings_or_exit
from triage.db.outbox import list_outbox, retry_failed
from triage.vocabulary import OutboxStatus

app = typer.Typer(no_args_is_help=True)


@app.command("list")
def list_(
    study_uid: str | None = typer.Option(None, "--study", help="only this Study Instance UID"),
    status: OutboxStatus | None = typer.Option(None, help="only rows in this status"),
    json_out: bool = typer.Option(False, "--json", help="machine-readable output"),
    limit: int = typer.Option(500, min=1),
) -> None:
    """Result objects and where they stand, per destination, newest first."""
    settings = settings_or_exit()
    with handled_errors():
        db = open_database(settings)
        with db.session() as session:
            entries = list_outbox(session, study_instance_uid=study_uid, status=status,
                                  limit=limit)
    if json_out:
        echo_json([e.to_dict() for e in entries])
        return
    if not entries:
        typer.echo("outbox empty")
        return
    for e in entries:
        why = f"  {e.last_error}" if e.status != OutboxStatus.SENT.value and e.last_error else ""
        typer.echo(f"{e.status:<8} {e.kind:<10} {e.destination:<32} attempts={e.attempts:<3} "
                   f"study={e.study_instance_uid} sop={e.sop_instance_uid}{why}")


@app.command("retry")
def retry(
    study_uid: str | None = typer.Option(None, "--study", help="only this Study Instance UID"),
    all_failed: bool = typer.Option(False, "--all-failed", help="every refused object"),
    reason: str = typer.Option(..., help="why (kept in the audit log), e.g. the fix made"),
) -> None:
    """Send objects the archive refused permanently again, once the cause is fixed."""
    if not study_uid and not all_failed:
        typer.echo("error: name an exam with --study UID, or pass --all-failed", err=True)
        raise typer.Exit(2)
    settings = settings_or_exit()
    with handled_errors():
        db = open_database(settings)
        with db.session() as session:
            count = retry_failed(session, study_instance_uid=study_uid, reason=reason)
    typer.echo(f"{count} refused object(s) queued again; the sender of `triage serve` / "
               "`triage listen` sends them on its next poll")
