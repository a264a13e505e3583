"""The dashboard: server-rendered pages over the same query functions as the API and CLI.

Pages (``/dashboard/...``): worklist (priority colours, coverage flags, status, refreshes
itself), exam (overlay thumbnails, per-member and per-breast scores, delivery per
destination, a retry button for admins), history (score distribution per week and per
model-set version, category rates over time, drift against the reference period:
``triage.drift``), system (queue depth, workers and their heartbeats, outbox backlog,
recent failures with reasons, weights status of each member).

Login with an API token (``triage tokens create``): the form posts it once, the page keeps
it in an HttpOnly, SameSite=Strict cookie. The same roles apply as in the API
(``triage.db.access``): viewers never see scores of unverified runs nor patient IDs; only
admins retry deliveries. Exam and history pages are written to the query audit. Little
JavaScript: none.
"""

from __future__ import annotations

import io
import logging
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from PIL import Image
from sqlalchemy import select

from triage.api.plots import box_plot, rate_lines
from triage.config import Settings
from triage.db import Database, OutboxItem, Study
from triage.db.access import Access
from triage.db.exam_detail import exam_detail
from triage.db.models import utcnow
from triage.db.monitoring import score_series, system_status
from triage.db.outbox import retry_failed
from triage.db.queries import WorklistEntry, WorklistRequest, worklist
from triage.db.query_audit import record_query
from triage.db.tokens import authenticate
from triage.drift import detect_drift, weekly
from triage.models.registry import get_spec
from triage.models.weights import assess_weights
from triage.vocabulary import OutputKind

log = logging.getLogger(__name__)

COOKIE = "triage_session"
REFRESH_SECONDS = 30
THUMBNAIL_ROWS = 256
TEMPLATES = Jinja2Templates(directory=str(Path(__file__).with_name("templates")))

router = APIRouter(prefix="/dashboard", include_in_schema=False)


def _state(request: Request) -> tuple[Settings, Database]:
    return request.app.state.settings, request.app.state.db


def _access(request: Request) -> Access | None:
    """The logged-in caller, from the session cookie (None: show the login page)."""
    secret = request.cookies.get(COOKIE, "")
    if not secret:
        return None
    settings, db = _state(request)
    with db.session() as session:
        token = authenticate(session, secret)
    if token is None:
        return None
    return Access.for_role(token.name, token.role, show_patient_ids=settings.api_show_patient_ids,
                           channel="dashboard")


def _to_login() -> RedirectResponse:
    return RedirectResponse("/dashboard/login", status_code=303)


def _fmt(value: float | None) -> str:
    return "not estimated" if value is None else f"{value:.3f}"


def _page(request: Request, template: str, access: Access | None, **context: Any) -> HTMLResponse:
    return TEMPLATES.TemplateResponse(request, template, {
        "access": access, "fmt": _fmt, "refresh": None, "title": template.removesuffix(".html"),
        "page": template.removesuffix(".html"), **context})


@router.get("", response_class=HTMLResponse)
def home(request: Request) -> Response:
    return RedirectResponse("/dashboard/worklist", status_code=303)


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request) -> Response:
    return _page(request, "login.html", None)


@router.post("/login", response_class=HTMLResponse)
def login(request: Request, token: str = Form("")) -> Response:
    _, db = _state(request)
    with db.session() as session:
        info = authenticate(session, token.strip())
    if info is None:
        log.warning("dashboard login refused")
        return _page(request, "login.html", None, error="Unknown or revoked token.")
    response = RedirectResponse("/dashboard/worklist", status_code=303)
    response.set_cookie(COOKIE, token.strip(), httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")
    log.info("dashboard login", extra={"token_name": info.name})
    return response


@router.post("/logout")
def logout(request: Request) -> Response:
    response = _to_login()
    response.delete_cookie(COOKIE)
    return response


def _score_text(access: Access) -> Callable[[WorklistEntry], str]:
    def text(entry: WorklistEntry) -> str:
        if entry.score is None:
            return ""
        if entry.category in ("NOT TRIAGED", "PARTIAL") and not access.unverified_scores:
            return "(admins only)"
        return f"{entry.score:.3f}"
    return text


@router.get("/worklist", response_class=HTMLResponse)
def worklist_page(request: Request, status: str | None = None,
                  category: str | None = None) -> Response:
    access = _access(request)
    if access is None:
        return _to_login()
    settings, db = _state(request)
    with db.session() as session:
        page = worklist(session, [p.name for p in settings.priorities],
                        WorklistRequest(status=status or None, category=category or None,
                                        limit=200))
    info = f"{len(page.entries)} of {page.total} shown." + (" More: narrow the filters."
                                                            if page.has_more else "")
    return _page(request, "worklist.html", access, entries=page.entries, page_info=info,
                 refresh=REFRESH_SECONDS, score_text=_score_text(access))


@router.get("/exams/{study_uid}", response_class=HTMLResponse)
def exam_page(request: Request, study_uid: str, message: str = "") -> Response:
    access = _access(request)
    if access is None:
        return _to_login()
    _, db = _state(request)
    with db.session() as session:
        detail = exam_detail(session, study_uid, include_patient_id=access.patient_ids)
        record_query(session, access, "dashboard exam", {"study_uid": study_uid},
                     1 if detail else 0)
    if detail is None:
        return HTMLResponse(f"No exam with Study Instance UID {study_uid}.", status_code=404)
    run = detail.latest_run
    hide = run is not None and not run.verified and not access.unverified_scores
    scores = [] if run is None else list(run.scores)
    if hide:
        scores = []
    failed = sum(1 for o in (run.outputs if run else ()) for d in o.deliveries
                 if d.status == "failed")
    overlays = [o.sop_instance_uid for o in (run.outputs if run else ())
                if o.kind == OutputKind.SC_OVERLAY.value]
    shown_run = run
    if hide and run is not None:  # the category and its reason stay; the numbers do not
        shown_run = replace(run, exam_score=None)
    return _page(request, "exam.html", access, exam=detail, run=shown_run,
                 breast_scores=[s for s in scores if s.level == "breast"],
                 view_scores=[s for s in scores if s.level == "view"],
                 failed_deliveries=failed, overlays=overlays, message=message, scores_hidden=hide,
                 title=f"exam {study_uid}")


@router.post("/exams/{study_uid}/retry")
def retry(request: Request, study_uid: str, reason: str = Form("")) -> Response:
    access = _access(request)
    if access is None:
        return _to_login()
    if not access.is_admin:
        return HTMLResponse("Only administrators may send refused objects again.",
                            status_code=403)
    _, db = _state(request)
    with db.session() as session:
        count = retry_failed(session, study_instance_uid=study_uid,
                             reason=f"dashboard, {access.who}: {reason or 'no reason given'}")
    return RedirectResponse(f"/dashboard/exams/{study_uid}?message=Queued+{count}+objects+again",
                            status_code=303)


@router.get("/exams/{study_uid}/overlays/{sop_uid}.png")
def overlay_thumbnail(request: Request, study_uid: str, sop_uid: str) -> Response:
    """A small PNG of one overlay we wrote for this exam (read from our outputs folder)."""
    access = _access(request)
    if access is None:
        return Response(status_code=401)
    _, db = _state(request)
    with db.session() as session:
        path = session.scalar(
            select(OutboxItem.path).join(Study, Study.id == OutboxItem.study_id)
            .where(Study.study_instance_uid == study_uid, OutboxItem.sop_instance_uid == sop_uid,
                   OutboxItem.kind == OutputKind.SC_OVERLAY.value).limit(1))
    if path is None or not os.path.isfile(path):
        return Response(status_code=404)
    pixels = np.asarray(pydicom.dcmread(path).pixel_array, dtype=np.uint8)
    image = Image.fromarray(pixels)
    image.thumbnail((THUMBNAIL_ROWS * 4, THUMBNAIL_ROWS))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return Response(out.getvalue(), media_type="image/png")


@router.get("/history", response_class=HTMLResponse)
def history_page(request: Request, weeks: int = 26) -> Response:
    access = _access(request)
    if access is None:
        return _to_login()
    weeks = max(1, min(weeks, 260))
    _, db = _state(request)
    since = utcnow() - timedelta(weeks=weeks)
    with db.session() as session:
        points = score_series(session, since=since)
        record_query(session, access, "dashboard history", {"weeks": weeks}, len(points))
    shown = [p for p in points if p.verified or access.unverified_scores]
    drift = detect_drift((p.scored_at, p.exam_score) for p in shown)
    by_week = {str(w): v for w, v in weekly((p.scored_at, p.exam_score) for p in shown).items()}
    flagged = [str(w) for w in drift.flagged_weeks]
    by_model: dict[str, list[float]] = {}
    for p in shown:
        by_model.setdefault(p.model_set_version, []).append(p.exam_score)
    week_of = {id(p): str(p.scored_at.date() - timedelta(days=p.scored_at.weekday()))
               for p in points}
    totals = Counter(week_of[id(p)] for p in points)
    categories = sorted({p.category for p in points})
    per_category = Counter((week_of[id(p)], p.category) for p in points)
    rates = {c: [(w, per_category[(w, c)] / totals[w]) for w in sorted(totals)]
             for c in categories}
    return _page(
        request, "history.html", access, n_points=len(points), since=since.date(),
        hidden=len(points) - len(shown), drift=drift,
        weekly_svg=box_plot(by_week, "exam score per week (red: drift)", highlight=flagged),
        model_set_svg=box_plot(by_model, "exam score per model-set version"),
        category_svg=rate_lines(rates, "share of exams per category and week"))


_ASSESSED: dict[tuple[str, ...], tuple[str, str]] = {}


def _member_status(name: str, settings: Settings) -> tuple[str, str]:
    """Weights status and why, cached until the models folder changes (hashing and the demo
    check read the whole weight file)."""
    folder = settings.models_dir
    stamp = tuple(f"{p.name}:{p.stat().st_mtime_ns}:{p.stat().st_size}"
                  for p in sorted(folder.glob("*")) if p.is_file()) if folder.is_dir() else ()
    key = (name, *stamp)
    if key not in _ASSESSED:
        try:
            assessment = assess_weights(name, settings)
            _ASSESSED[key] = (assessment.status.value, assessment.reason)
        except Exception as exc:  # a broken file is shown, not a broken page
            _ASSESSED[key] = ("unreadable", f"{type(exc).__name__}: {exc}")
    return _ASSESSED[key]


@router.get("/system", response_class=HTMLResponse)
def system_page(request: Request) -> Response:
    access = _access(request)
    if access is None:
        return _to_login()
    settings, db = _state(request)
    with db.session() as session:
        status = system_status(session)
    members = []
    for member in settings.ensemble:
        state, reason = _member_status(member.name, settings)
        members.append({"name": member.name, "version": get_spec(member.name).version,
                        "status": state, "reason": reason})
    return _page(request, "system.html", access, status=status, members=members,
                 refresh=REFRESH_SECONDS)
