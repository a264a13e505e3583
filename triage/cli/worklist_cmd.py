"""`triage worklist`: the exams that matter now, by category then newest first, a page at a time."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import typer

from triage.cli.common import echo_json, handled_errors, open_database, settings_or_exit
from triage.db import queries
from triage.db.queries import WorklistEntry, WorklistPage, WorklistRequest

_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_since(text: str, now: datetime) -> datetime:
    """``24h``, ``90m``, ``7d``, ``30s`` before ``now``, or an ISO 8601 time with its offset."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", text)
    if match:
        return now - timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        at = None
    if at is None or at.tzinfo is None:
        raise typer.BadParameter(
            f"{text!r} is neither a duration (24h, 90m, 7d) nor an ISO 8601 time with its "
            "offset (2026-01-31T08:00+00:00)", param_hint="--since")
    return at.astimezone(UTC)


def _time(at: datetime | None) -> str:
    return "-" if at is None else at.astimezone(UTC).strftime("%Y-%m-%d %H:%MZ")


def format_entry(e: WorklistEntry) -> str:
    score = "-" if e.score is None else f"{e.score:.3f}"
    status = f"{e.status}{' (partial)' if e.partial else ''}"
    line = (f"{e.category:<12} score {score:>6}  {status:<20} {_time(e.first_received_at)}  "
            f"{','.join(e.accession_numbers) or '-':<14} {e.study_instance_uid}")
    return f"{line}\n{'':<12} reason: {e.reason}" if e.reason else line


def _footer(page: WorklistPage, number: int | None, first: int) -> str:
    """``number`` is the page number, None when the page was read with a cursor."""
    if number is None:
        shown = f"{len(page.entries)} after the cursor"
    else:
        shown = f"{first + 1}-{first + len(page.entries)}" if page.entries else "none"
    text = f"{shown} of {page.total} (delivered and skipped exams since {_time(page.since)})"
    if page.has_more:
        more = f"--page {number + 1}" if number is not None else f"--cursor {page.next_cursor}"
        text += f"; more: {more}"
    return text


def worklist(
    json_out: bool = typer.Option(False, "--json", help="machine-readable output (one page)"),
    limit: int = typer.Option(queries.DEFAULT_PAGE_SIZE, "--limit", min=1, max=queries.MAX_PAGE_SIZE,
                              help="exams per page"),
    page: int = typer.Option(1, "--page", min=1, help="page number (pages of --limit exams)"),
    cursor: str | None = typer.Option(None, "--cursor",
                                      help="next_cursor of the previous page (instead of --page)"),
    since: str = typer.Option("24h", "--since", help="show delivered and skipped exams that "
                              "finished within this window (24h, 90m, 7d) or since an ISO time; "
                              "unfinished and failed exams are always shown"),
    status: str | None = typer.Option(None, "--status", help="only exams in this status"),
    category: str | None = typer.Option(None, "--category",
                                        help="only this category (a priority, PARTIAL or 'NOT TRIAGED')"),
) -> None:
    """Exams not yet delivered (receiving, ready, queued, scoring, scored, failed) and those
    delivered or skipped within --since, by category (configured priorities, then PARTIAL,
    then NOT TRIAGED with the reason), newest first within a category. Scores of unverified
    runs are shown for admins only."""
    settings = settings_or_exit()
    if cursor is not None and page != 1:
        raise typer.BadParameter("give --cursor or --page, not both", param_hint="--page")
    with handled_errors():
        request = WorklistRequest(status=status, category=category,
                                  since=parse_since(since, datetime.now(UTC)), limit=limit,
                                  cursor=cursor, offset=(page - 1) * limit)
        db = open_database(settings)
        try:
            with db.session() as session:
                result = queries.worklist(session, [p.name for p in settings.priorities], request)
        finally:
            db.dispose()
    if json_out:
        echo_json(result.to_dict())
        return
    if not result.entries:
        typer.echo("worklist is empty" if not result.total else "no exams on this page")
    for e in result.entries:
        typer.echo(format_entry(e))
    typer.echo(_footer(result, None if cursor else page, request.offset))
