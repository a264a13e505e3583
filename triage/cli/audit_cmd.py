"""`triage audit`: who read score history and exam details (the query audit), newest first."""

from __future__ import annotations

import typer

from triage.cli.common import echo_json, handled_errors, open_database, settings_or_exit
from triage.cli.scores_cmd import cli_access
from triage.db.query_audit import DEFAULT_AUDIT_PAGE, MAX_AUDIT_PAGE, AuditEntry, list_queries


def _line(e: AuditEntry) -> str:
    filters = " ".join(f"{k}={v}" for k, v in e.filters.items()) or "-"
    return (f"{e.at:%Y-%m-%d %H:%M:%SZ}  {e.who:<20} {e.role:<7} {e.channel:<4} {e.query:<15} "
            f"rows {e.rows:<6} {filters}")


def audit(
    json_out: bool = typer.Option(False, "--json", help="machine-readable output (one page)"),
    who: str | None = typer.Option(None, "--who", help="only this token name (or cli:USER)"),
    limit: int = typer.Option(DEFAULT_AUDIT_PAGE, "--limit", min=1, max=MAX_AUDIT_PAGE),
    cursor: str | None = typer.Option(None, "--cursor", help="next_cursor of the previous page"),
) -> None:
    """Each score-history and exam query of the API and the CLI: when, who, role, channel,
    the filters given and how many rows it returned."""
    settings = settings_or_exit()
    with handled_errors():
        db = open_database(settings)
        try:
            with db.session() as session:
                page = list_queries(session, cli_access(settings), limit=limit, cursor=cursor,
                                    who=who)
        finally:
            db.dispose()
    if json_out:
        echo_json(page.to_dict())
        return
    if not page.entries:
        typer.echo("no queries recorded")
    for e in page.entries:
        typer.echo(_line(e))
    if page.has_more:
        typer.echo(f"more: --cursor {page.next_cursor}")
