"""`triage serve`: the whole product in one process (embedded default), in the foreground.

Listener + dispatcher/reconciler + embedded worker (no broker) + outbox sender. With
``--demo`` it also sends itself a synthetic exam once it answers C-ECHO, waits for the
result and prints its worklist line and where the outputs went. ``make run`` runs
``triage serve --demo`` (README.md, "What `make run` shows").
"""

from __future__ import annotations

import logging
import threading
import time

import typer
from sqlalchemy import select

from triage.cli.common import (
    configure_logging,
    handled_errors,
    open_database,
    settings_or_exit,
    stop_event_on_signals,
)
from triage.cli.demo_cmd import send_demo_exam
from triage.cli.worklist_cmd import format_entry
from triage.config import Destination, Settings, load_settings
from triage.db import Database, OutboxItem, Study, migrate, queries
from triage.delivery.outbox import LOCAL_DESTINATION
from triage.dicom.echo import echo
from triage.models import ensure_demo_weights
from triage.pipeline import load_ensemble
from triage.service import Services

log = logging.getLogger(__name__)
FINAL = ("scored", "delivered", "failed", "skipped")
#: the quiet period of a ``--demo`` process unless TRIAGE_QUIET_SECONDS (or the TOML file)
#: sets one: the demo exam arrives in one association, so first use need not wait the
#: product default (30 s). Only ``--demo`` changes it.
DEMO_QUIET_SECONDS = 2.0
_KIND_NAMES = {"sr_tid1500": "TID 1500 SR", "sr_mammo_cad": "Mammography CAD SR",
               "sc_overlay": "overlay"}


def _wait_for_echo(destination: Destination, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if echo(destination, "TRIAGE_DEMO", timeout=2.0):
            return
        time.sleep(0.5)
    typer.echo(f"error: our own listener did not answer C-ECHO on {destination} within "
               f"{timeout:g} s", err=True)
    raise typer.Exit(1)


def _what_went_where(items: list[tuple[str, str]], settings: Settings, study_uid: str) -> str:
    """``<outputs>/<uid>/ (1 TID 1500 SR, 4 overlays)`` per destination, from the exam's
    outbox rows as (destination, kind)."""
    parts = []
    for destination in sorted({d for d, _ in items}):
        kinds = [k for d, k in items if d == destination]
        order = [*_KIND_NAMES, *sorted(set(kinds) - set(_KIND_NAMES))]
        counts = ", ".join(f"{kinds.count(k)} {_KIND_NAMES.get(k, k)}{'s' if kinds.count(k) > 1 else ''}"
                           for k in order if k in kinds)
        where = (f"{settings.outputs_dir / study_uid}/" if destination == LOCAL_DESTINATION
                 else destination)
        parts.append(f"{where} ({counts})")
    return "; ".join(parts)


def _report_demo(db: Database, settings: Settings, study_uid: str, stop: threading.Event) -> None:
    typer.echo(f"demo exam {study_uid} sent; waiting for the quiet period "
               f"({settings.quiet_seconds:g} s) and scoring...")
    status = ""
    items: list[tuple[str, str]] = []
    while not stop.is_set():
        with db.session() as session:
            study = session.scalars(select(Study).where(Study.study_instance_uid == study_uid)).first()
            status = study.status if study else "receiving"
            if study is not None:
                items = [(row.destination, row.kind) for row in session.execute(
                    select(OutboxItem.destination, OutboxItem.kind).where(OutboxItem.study_id == study.id))]
        if status in FINAL and (status != "scored" or not settings.archive):
            break
        stop.wait(1.0)
    if stop.is_set():
        return
    with db.session() as session:
        entries = queries.worklist(session, [p.name for p in settings.priorities],
                                   queries.WorklistRequest(study_instance_uid=study_uid)).entries
    typer.echo("worklist line for the demo exam:")
    for e in entries:
        typer.echo("  " + format_entry(e).replace("\n", "\n  "))
    typer.echo(f"results went to: {_what_went_where(items, settings, study_uid) or 'nowhere yet'}")


def serve(demo: bool = typer.Option(False, "--demo", help=(
        "also send ourselves a synthetic exam and print its worklist line; creates seeded "
        "demo weights for members that have none (results marked UNCALIBRATED)"))) -> None:
    """Run the product in the foreground until Ctrl-C."""
    settings = settings_or_exit()
    configure_logging(settings)
    stop = stop_event_on_signals()
    with handled_errors():
        settings.prepare_directories()
        migrate.upgrade(settings.resolved_database_url)
        if demo:
            # the demo's results are unverified by design; it delivers them wherever the
            # operator configured (the local outputs folder by default)
            demo_overrides: dict[str, object] = {"allow_uncalibrated": True,
                                                 "send_unverified": True}
            if "quiet_seconds" not in settings.model_fields_set:
                demo_overrides["quiet_seconds"] = DEMO_QUIET_SECONDS
            settings = load_settings(**demo_overrides)
            created = ensure_demo_weights(settings)
            if created:
                typer.echo(f"created seeded demo weights for {len(created)} member(s): their "
                           "scores mean nothing and are marked UNCALIBRATED / NOT TRIAGED")
        db = open_database(settings)
        ensemble = None
        if not settings.broker_url:  # validate members before any exam is touched
            ensemble = load_ensemble(settings)
        services = Services(settings, db, embedded_worker=True)
        services.start(ensemble=ensemble)
    host, port = services.address
    typer.echo(f"triage is serving: DICOM {settings.ae_title}@{host}:{port}, API "
               f"{services.api_url} (token required), database "
               f"{db.engine.url.render_as_string(hide_password=True)}, "
               f"{'broker ' + settings.broker_url if settings.broker_url else 'embedded worker'}, "
               f"archive {settings.archive or settings.outputs_dir}. Ctrl-C stops.")
    try:
        if demo:
            destination = Destination(ae_title=settings.ae_title, host="127.0.0.1", port=port)
            _wait_for_echo(destination)
            with handled_errors():
                uid = send_demo_exam(settings, destination)
            _report_demo(db, settings, uid, stop)
        stop.wait()
    finally:
        services.stop()
        typer.echo("triage stopped")
