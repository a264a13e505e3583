"""`triage scores history`: finished scoring runs, newest first (the same query function as
``GET /api/v1/scores/history``), one page as text or JSON, or every matching run as CSV.

The CLI runs with the database's credentials, so it reads as an admin (scores of unverified
runs shown); patient IDs are shown and searchable only with TRIAGE_API_SHOW_PATIENT_IDS=1,
as for admin tokens. Every query is written to the query audit as ``cli:<os user>``.
"""

from __future__ import annotations

import csv
import getpass
import sys
from datetime import UTC, datetime

import typer

from triage.cli.common import echo_json, handled_errors, open_database, settings_or_exit
from triage.cli.worklist_cmd import parse_since
from triage.config import Settings
from triage.db import Database
from triage.db.access import Access, Role
from triage.db.history import (
    DEFAULT_HISTORY_PAGE,
    MAX_HISTORY_PAGE,
    HistoryFilter,
    HistoryRow,
    check_filter,
    csv_columns,
    csv_record,
    score_history,
    walk_history,
)
from triage.db.queries import category_order
from triage.db.query_audit import HISTORY_QUERY, record_query
from triage.errors import TriageError

app = typer.Typer(no_args_is_help=True)


def cli_access(settings: Settings) -> Access:
    """Who the command line is: an admin named after the OS user."""
    return Access.for_role(f"cli:{getpass.getuser()}", Role.ADMIN,
                           show_patient_ids=settings.api_show_patient_ids, channel="cli")


def _time(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%MZ")


def _p(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def format_row(row: HistoryRow) -> str:
    breasts = "  ".join(f"{b.laterality} {_p(b.p_malignant)}" for b in row.breast_scores) or "-"
    flags = ",".join(f for f, on in (("verified", row.verified), ("unverified", not row.verified),
                                     ("partial", row.partial)) if on)
    who = f"  patient {row.patient_id}" if row.patient_id else ""
    return (f"{_time(row.scored_at)}  {row.category or '-':<12} score {_p(row.exam_score):>6}  "
            f"{breasts:<18} {flags:<18} {','.join(row.accession_numbers) or '-':<14} "
            f"{row.study_instance_uid}  {row.model_set_version}{who}")


@app.command("history")
def history(
    since: str | None = typer.Option(None, "--since", help="scored within this window (24h, "
                                     "7d) or since an ISO time with its offset"),
    until: str | None = typer.Option(None, "--until", help="scored before this ISO time (or "
                                     "this long ago: 1d)"),
    accession: str | None = typer.Option(None, "--accession", help="an accession number"),
    patient_id: str | None = typer.Option(None, "--patient-id", help="a patient ID (needs "
                                          "TRIAGE_API_SHOW_PATIENT_IDS=1)"),
    model_set: str | None = typer.Option(None, "--model-set", help="a model-set version"),
    category: str | None = typer.Option(None, "--category",
                                        help="a priority, PARTIAL or 'NOT TRIAGED'"),
    min_score: float | None = typer.Option(None, "--min-score", help="exam score at least"),
    max_score: float | None = typer.Option(None, "--max-score", help="exam score at most"),
    study: str | None = typer.Option(None, "--study", help="one exam's Study Instance UID"),
    limit: int = typer.Option(DEFAULT_HISTORY_PAGE, "--limit", min=1, max=MAX_HISTORY_PAGE,
                              help="runs per page (text and JSON)"),
    cursor: str | None = typer.Option(None, "--cursor", help="next_cursor of the previous page"),
    json_out: bool = typer.Option(False, "--json", help="one page as JSON"),
    csv_out: bool = typer.Option(False, "--csv", help="every matching run as CSV on stdout"),
) -> None:
    """Finished scoring runs, newest first: when scored, category, exam score, the
    ensemble's malignancy probability per breast, verified/partial, accession numbers,
    Study Instance UID and model-set version. Written to the query audit."""
    settings = settings_or_exit()
    if json_out and csv_out:
        raise typer.BadParameter("give --json or --csv, not both", param_hint="--csv")
    access = cli_access(settings)
    categories = category_order([p.name for p in settings.priorities])
    now = datetime.now(UTC)
    with handled_errors():
        flt = HistoryFilter(
            since=parse_since(since, now) if since else None,
            until=parse_since(until, now) if until else None,
            accession=accession, patient_id=patient_id, model_set_version=model_set,
            category=category, min_score=min_score, max_score=max_score,
            study_instance_uid=study, limit=limit, cursor=cursor)
        check_filter(flt, access, categories)
        db = open_database(settings)
        try:
            if csv_out:
                _write_csv(db, flt, access, categories)
                return
            with db.session() as session:
                page = score_history(session, flt, access, categories=categories)
                record_query(session, access, HISTORY_QUERY, flt.audit_filters(),
                             rows=len(page.rows))
        finally:
            db.dispose()
    if json_out:
        echo_json(page.to_dict())
        return
    if not page.rows:
        typer.echo("no scoring runs match")
    for row in page.rows:
        typer.echo(format_row(row))
    if page.has_more:
        typer.echo(f"{len(page.rows)} runs shown; more: --cursor {page.next_cursor}")


def _write_csv(db: Database, flt: HistoryFilter, access: Access,
               categories: tuple[str, ...]) -> None:
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(csv_columns(access))
    rows = 0
    try:
        for row in walk_history(db.session, flt, access, categories=categories):
            writer.writerow(csv_record(row, access))
            rows += 1
    except BrokenPipeError as exc:  # `| head`: stop quietly, the audit says how far it got
        raise TriageError("output closed before the export finished") from exc
    finally:
        with db.session() as session:
            filters = {k: v for k, v in flt.audit_filters().items() if k != "limit"}
            record_query(session, access, HISTORY_QUERY, {**filters, "format": "csv"}, rows=rows)
