"""`triage exams list|show|release`: faces over ``queries.list_exams``,
``exam_detail.exam_detail`` (the same function the API's exam endpoint calls) and
``exams.hold.release``."""

from __future__ import annotations

import getpass
import json
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime

import typer

from triage.cli.common import echo_json, handled_errors, open_database, settings_or_exit
from triage.cli.scores_cmd import cli_access
from triage.cli.worklist_cmd import parse_since
from triage.db import queries
from triage.db.exam_detail import ExamDetail, OutputDetail, RunDetail, exam_detail
from triage.db.models import utcnow
from triage.db.query_audit import EXAM_QUERY, record_query
from triage.exams.hold import release as release_exam

app = typer.Typer(no_args_is_help=True)


def _time(at: datetime | None, seconds: bool = False) -> str:
    if at is None:
        return "-"
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ" if seconds else "%Y-%m-%d %H:%MZ")


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


# ---- list ------------------------------------------------------------------------------


@app.command("list")
def list_(
    json_out: bool = typer.Option(False, "--json", help="machine-readable output (a list; "
                                  "a truncation note goes to stderr)"),
    since: str | None = typer.Option(None, "--since", help="only exams with images received "
                                     "within this window (24h, 90m, 7d) or since an ISO time"),
    status: str | None = typer.Option(None, "--status", help="only exams in this status"),
    category: str | None = typer.Option(None, "--category", help="only exams whose latest "
                                        "run has this category (a priority, PARTIAL or "
                                        "'NOT TRIAGED')"),
    model_set: str | None = typer.Option(None, "--model-set",
                                         help="only exams with a run by this model-set version"),
    accession: str | None = typer.Option(None, "--accession",
                                         help="only exams with this accession number"),
    limit: int = typer.Option(queries.DEFAULT_EXAM_LIST, "--limit", min=1,
                              max=queries.MAX_EXAM_LIST, help="show at most this many exams"),
) -> None:
    """Exams in every status, newest activity first, with the latest run's category, score
    and model-set version. Says when more exams matched than --limit shows."""
    settings = settings_or_exit()
    with handled_errors():
        after = parse_since(since, datetime.now(UTC)) if since is not None else None
        db = open_database(settings)
        try:
            with db.session() as session:
                result = queries.list_exams(session, since=after, status=status,
                                            category=category, model_set=model_set,
                                            accession=accession, limit=limit)
        finally:
            db.dispose()
    note = (f"showing {len(result.exams)} of {result.total} exams; use --limit to see more"
            if result.truncated else None)
    if json_out:
        echo_json([e.to_dict() for e in result.exams])
        if note:
            typer.echo(note, err=True)
        return
    if not result.exams:
        known = queries.category_order([p.name for p in settings.priorities])
        typer.echo("no exams" + (f" (category {category!r} is not one of the configured "
                                 f"categories: {', '.join(known)})"
                                 if category is not None and category not in known else ""))
        return
    typer.echo(f"{'LAST RECEIVED':<17}  {'STATUS':<10} {'CATEGORY':<12} {'SCORE':>6}  "
               f"{'MODEL SET':<19}  {'ACCESSION':<16} {'VIEWS':<21}  STUDY INSTANCE UID")
    for e in result.exams:
        status_text = e.status + ("*" if e.partial else "")
        received = _time(datetime.fromisoformat(e.last_received_at))
        typer.echo(f"{received:<17}  {status_text:<10} {e.category or '-':<12} "
                   f"{_score(e.exam_score):>6}  {e.model_set_version or '-':<19}  "
                   f"{','.join(e.accession_numbers) or '-':<16} {','.join(e.views) or '-':<21}  "
                   f"{e.study_instance_uid}")
        why = e.hold_reason or e.skipped_reason or e.failure_reason
        if why:
            typer.echo(f"{'':<17}  {'held' if e.hold_reason else e.status}: {why}")
    if any(e.partial for e in result.exams):
        typer.echo("* partial: the exam lacks coverage or its latest run scored an incomplete exam")
    typer.echo(note or f"{result.total} exam(s)")


# ---- show ------------------------------------------------------------------------------


def _score_table(run: RunDetail) -> Iterator[str]:
    """Member x view x breast P(malignant): one row per member, the ensemble last."""
    views = sorted({(s.laterality or "-", s.view or "-") for s in run.scores if s.level == "view"})
    breasts = sorted({s.laterality or "-" for s in run.scores if s.level == "breast"})
    cells: dict[tuple[str | None, str], list[float]] = defaultdict(list)
    for s in run.scores:
        lat = s.laterality or "-"
        column = {"view": f"{lat}-{s.view or '-'}", "breast": f"breast {lat}",
                  "exam": "exam"}.get(s.level, s.level)
        cells[(s.member, column)].append(s.p_malignant)
    members = list(dict.fromkeys([m.name for m in run.members]
                                 + [s.member for s in run.scores if s.member is not None]))
    columns = ([f"{lat}-{view}" for lat, view in views] + [f"breast {b}" for b in breasts]
               + ["exam"])
    width = max([len("ensemble"), *(len(m) for m in members)])
    yield f"{'P(malignant)':<{width}}  " + " ".join(f"{c:>8}" for c in columns)
    for member in [*members, None]:
        row = [cells.get((member, c)) for c in columns]
        if not any(row):
            continue
        text = ["/".join(f"{v:.3f}" for v in values) if values else "-" for values in row]
        yield f"{member or 'ensemble':<{width}}  " + " ".join(f"{t:>8}" for t in text)


def _output_lines(outputs: tuple[OutputDetail, ...]) -> Iterator[str]:
    """Each object, then its state at each destination."""
    width = max((len(d.destination) for o in outputs for d in o.deliveries), default=0)
    for o in outputs:
        yield f"{o.kind:<13} {o.sop_instance_uid}"
        for d in o.deliveries:
            state = d.status
            if d.status == "sent":
                state += f" {_time(d.sent_at)}"
            elif d.attempts:
                state += f" after {d.attempts} attempt(s)"
            if d.last_error and d.status != "sent":
                state += f": {d.last_error}"
            yield f"  -> {d.destination:<{width}}  {state}"


def _run_lines(number: int, run: RunDetail) -> Iterator[str]:
    yield (f"  run {number}{' (latest)' if run.latest else ''}: {run.model_set_version}  "
           f"{run.status}  {run.category or '-'}  score {_score(run.exam_score)}  "
           f"{'verified' if run.verified else 'UNVERIFIED'}{'  PARTIAL' if run.partial else ''}  "
           f"started {_time(run.started_at, True)}, finished {_time(run.finished_at, True)}")
    if run.not_triaged_reason:
        yield f"    not triaged: {run.not_triaged_reason}"
    if run.coverage_gaps:
        yield f"    coverage gaps: {'; '.join(run.coverage_gaps)}"
    if run.error:
        yield f"    error: {run.error}"
    yield "    members:"
    for m in run.members:
        state = "included" if m.included else f"left out: {m.failure_reason}"
        sha = (m.weights_sha256 or "-")[:12]
        yield (f"      {m.name} {m.version}  weight {m.ensemble_weight:g}  {m.weights_status}  "
               f"sha256 {sha}  {state}")
    if run.scores:
        yield "    scores:"
        for line in _score_table(run):
            yield f"      {line}"
    if run.timings:
        yield "    timings: " + ", ".join(f"{k} {v:.2f}" for k, v in run.timings.items())
    yield "    outputs:" + ("" if run.outputs else " none")
    for line in _output_lines(run.outputs):
        yield f"      {line}"


def _detail_lines(d: ExamDetail) -> Iterator[str]:
    yield f"exam {d.study_instance_uid}"
    header = [
        ("status", d.status + (" (partial)" if d.partial else "")),
        ("held", d.hold_reason), ("skipped", d.skipped_reason), ("failed", d.failure_reason),
        ("accession", ", ".join(d.accession_numbers) or "-"),
        ("patient ID", (f"{d.patient_id or '-'} (issuer {d.issuer_of_patient_id or '-'})"
                        if d.patient_id_included else "hidden (--patient-id shows it)")),
        ("study date", f"{d.study_date or '-'} {d.study_time or ''}".strip()),
        ("received", f"{_time(d.first_received_at, True)} to {_time(d.last_received_at, True)}"),
        ("image classes", ", ".join(d.image_classes) or "-"),
        ("chosen views", ", ".join(d.views) or "none"),
        ("calling AE", ", ".join(sorted({i.calling_ae for i in d.instances if i.calling_ae}))
         or "-"),
        ("scoring", f"{d.scoring_attempts} attempt(s), {d.worker_losses} worker loss(es), "
                    f"{d.transient_retries} transient retry(ies), re-opened {d.reopen_count}x"),
    ]
    for key, value in header:
        if value is not None:
            yield f"  {key:<14} {value}"
    yield ""
    yield "status history:"
    for c in d.status_history:
        yield (f"  {_time(c.at, True)}  {c.from_status or '-'} -> {c.to_status}"
               + (f"  ({c.reason})" if c.reason else ""))
    yield ""
    yield f"instances ({len(d.instances)}):"
    for i in d.instances:
        flags = [f for f, on in (("chosen", i.chosen), ("superseded", i.superseded),
                                 ("loopback", i.loopback), ("lossy", i.lossy)) if on]
        if not i.scorable:
            flags.append(f"not scored: {i.reason}")
        side = f"{i.laterality or '-'}-{i.view or '-'}" if i.laterality or i.view else "-"
        yield (f"  {i.sop_instance_uid}  {i.image_class:<11} {side:<6} "
               f"from {i.calling_ae or '-':<16} {_time(i.received_at, True)}  {', '.join(flags)}")
    yield ""
    yield f"runs ({len(d.runs)}, oldest first):" if d.runs else "runs: none"
    for n, run in enumerate(d.runs, start=1):
        yield from _run_lines(n, run)
    if d.outputs_without_run:
        yield "outputs of no stored run:"
        for line in _output_lines(d.outputs_without_run):
            yield f"  {line}"
    yield ""
    yield f"audit events ({len(d.audit_events)}):"
    for e in d.audit_events:
        detail = json.dumps(dict(e.detail), sort_keys=True, default=str)
        yield f"  {_time(e.at, True)}  {e.kind}  {e.sop_instance_uid or '-'}  {detail}"


@app.command("show")
def show(
    study_uid: str = typer.Argument(..., help="Study Instance UID"),
    json_out: bool = typer.Option(False, "--json", help="machine-readable output"),
    patient_id: bool = typer.Option(False, "--patient-id",
                                    help="include patient IDs (hidden by default)"),
) -> None:
    """One exam in full: header, status history, instances (classification, calling AE),
    every run with its model-set version, members and member x view x breast scores, the
    outputs with their state per destination, and the exam's audit events."""
    settings = settings_or_exit()
    with handled_errors():
        db = open_database(settings)
        try:
            with db.session() as session:
                detail = exam_detail(session, study_uid, include_patient_id=patient_id)
                record_query(session, cli_access(settings), EXAM_QUERY,
                             {"study_instance_uid": study_uid, "patient_id": patient_id or None},
                             rows=1 if detail else 0)
        finally:
            db.dispose()
    if detail is None:
        typer.echo(f"error: no exam with Study Instance UID {study_uid!r} is known; "
                   "`triage exams list` shows the exams received", err=True)
        raise typer.Exit(1)
    if json_out:
        echo_json(detail.to_dict())
        return
    for line in _detail_lines(detail):
        typer.echo(line)


# ---- release ---------------------------------------------------------------------------


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
