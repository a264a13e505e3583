"""``GET /healthz`` (liveness) and ``GET /readyz`` (readiness), for probes and operators.

* ``/healthz``: the process answers; it touches nothing else, so a database or archive outage
  never gets the process restarted. The only path served without a token (the app's
  authentication middleware lets it through; these routes hold no auth logic).
* ``/readyz``: can this instance do its work now? Each check is reported by name, with
  ``ok`` and a ``detail`` an operator can act on; the status is 200 when all pass, else 503:

  - ``database``: a ``SELECT 1`` and one row of the exam table (the schema is there);
  - ``broker``: a connection to ``TRIAGE_BROKER_URL``, when one is set;
  - ``archive <AET@host:port>``: a C-ECHO to each configured destination (SR and overlay
    destinations, each once), calling AE ``TRIAGE_AE_TITLE``; none configured: results go
    to the local outputs folder and the check says so;
  - ``spool_disk``: free space of the spool's filesystem at least ``TRIAGE_MIN_FREE_SPOOL_MB``.

  The network checks run in parallel, each bounded by :data:`CHECK_TIMEOUT_SECONDS`.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from triage import __version__
from triage.api.auth import database, settings_of
from triage.config import Destination, Settings
from triage.db import Database, Study
from triage.db.session import check_connection
from triage.dicom.echo import echo
from triage.errors import TriageError

router = APIRouter(tags=["health"])

#: the longest any one check may take (connect, associate, answer)
CHECK_TIMEOUT_SECONDS = 3.0


class Alive(BaseModel):
    status: Literal["alive"] = "alive"
    version: str


class CheckOut(BaseModel):
    ok: bool
    detail: str
    seconds: float


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    checks: dict[str, CheckOut]


def check_database(db: Database) -> str:
    """Raise with the reason when the database cannot serve the product."""
    check_connection(db)
    try:
        with db.session() as session:
            session.execute(select(Study.id).limit(1)).all()
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise RuntimeError(f"the triage schema is not usable ({reason}): run "
                           "`triage db upgrade`") from exc
    return f"reachable: {db.engine.url.render_as_string(hide_password=True)}"


def check_broker(url: str) -> str:
    from kombu import Connection

    with Connection(url, connect_timeout=CHECK_TIMEOUT_SECONDS,
                    transport_options={"socket_timeout": CHECK_TIMEOUT_SECONDS}) as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0,
                               timeout=CHECK_TIMEOUT_SECONDS)
        return f"reachable: {conn.as_uri()}"


def check_archive(destination: Destination, calling_ae: str) -> str:
    if not echo(destination, calling_ae, timeout=CHECK_TIMEOUT_SECONDS):
        raise RuntimeError(f"no successful C-ECHO from {destination} (calling AE {calling_ae}): "
                           "check TRIAGE_ARCHIVE / TRIAGE_ARCHIVE_SR / TRIAGE_ARCHIVE_OVERLAY, "
                           "that the archive runs and that it knows our AE title")
    return f"C-ECHO answered by {destination}"


def check_spool_disk(spool: Path, min_free_mb: float) -> str:
    where = spool if spool.exists() else spool.parent
    usage = shutil.disk_usage(where)
    free_mb = usage.free / 2**20
    text = (f"{free_mb:,.0f} MiB free of {usage.total / 2**20:,.0f} MiB at {where} "
            f"(minimum TRIAGE_MIN_FREE_SPOOL_MB={min_free_mb:g})")
    if free_mb < min_free_mb:
        raise RuntimeError(f"too little space: {text}; free space or move TRIAGE_DATA_DIR")
    return text


def archive_destinations(settings: Settings) -> list[Destination]:
    """Every configured destination once (SR and overlay destinations, falling back to
    ``TRIAGE_ARCHIVE``)."""
    seen: dict[str, Destination] = {}
    for kind in ("sr", "overlay"):
        for destination in settings.destinations(kind):
            seen.setdefault(str(destination), destination)
    return list(seen.values())


def _run(check: Callable[[], str]) -> CheckOut:
    started = time.monotonic()
    try:
        ok, detail = True, check()
    except (TriageError, OSError, RuntimeError, SQLAlchemyError) as exc:
        ok, detail = False, str(exc) or type(exc).__name__
    except Exception as exc:  # a probe must answer: an unexpected failure is a failed check
        ok, detail = False, f"{type(exc).__name__}: {exc}"
    return CheckOut(ok=ok, detail=detail, seconds=round(time.monotonic() - started, 3))


def readiness(settings: Settings, db: Database) -> Readiness:
    """Run every check (in parallel) and say whether this instance is ready."""
    checks: dict[str, Callable[[], str]] = {"database": lambda: check_database(db)}
    if settings.broker_url:
        checks["broker"] = lambda: check_broker(settings.broker_url)
    destinations = archive_destinations(settings)
    for destination in destinations:
        checks[f"archive {destination}"] = partial(check_archive, destination, settings.ae_title)
    checks["spool_disk"] = lambda: check_spool_disk(settings.spool_dir, settings.min_free_spool_mb)
    with ThreadPoolExecutor(max_workers=len(checks), thread_name_prefix="readyz") as pool:
        futures = {name: pool.submit(_run, check) for name, check in checks.items()}
        results = {name: future.result() for name, future in futures.items()}
    if not destinations:
        results["archive"] = CheckOut(ok=True, seconds=0.0, detail=(
            f"no archive configured (TRIAGE_ARCHIVE): results are written to "
            f"{settings.outputs_dir}"))
    ready = all(r.ok for r in results.values())
    return Readiness(status="ready" if ready else "not ready", checks=results)


@router.get("/healthz", response_model=Alive, summary="Liveness: the process answers (no token)")
def healthz() -> Alive:
    return Alive(version=__version__)


@router.get("/readyz", response_model=Readiness,
            responses={503: {"model": Readiness, "description": "a check failed"}},
            summary="Readiness: database, broker, archive (C-ECHO), spool disk space")
def readyz(settings: Settings = Depends(settings_of), db: Database = Depends(database)
           ) -> JSONResponse:
    result = readiness(settings, db)
    return JSONResponse(result.model_dump(), status_code=200 if result.status == "ready" else 503)
