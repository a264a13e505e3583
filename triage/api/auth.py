"""Bearer tokens on every request but the open paths, and the admin role check.

The middleware authenticates each request once (one indexed lookup of the token's sha256,
:func:`triage.db.tokens.authenticate`) and leaves the caller's :class:`Access` on the
request; routes ask for it with ``Depends(caller)`` or ``Depends(admin)``. It also logs one
line per request: method, path (never the query string, which may hold a patient ID
filter), status, caller and time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from starlette.concurrency import run_in_threadpool

from triage.api.problems import problem
from triage.config import Settings
from triage.db import Database
from triage.db.access import Access
from triage.db.tokens import TokenInfo, authenticate

log = logging.getLogger(__name__)

#: paths answered without a token (liveness probes cannot carry one)
OPEN_PATHS = frozenset({"/healthz"})
#: the dashboard's pages check the token kept in their session cookie themselves
#: (``triage.api.dashboard``): a browser cannot send a bearer header on a link
COOKIE_PATHS_PREFIX = "/dashboard"
#: name of the security scheme in the OpenAPI schema
SECURITY_SCHEME = "bearerToken"
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="triage"'}


def _lookup(db: Database, secret: str) -> TokenInfo | None:
    with db.session() as session:
        return authenticate(session, secret)


def install(app: FastAPI, settings: Settings, db: Database) -> None:
    """Add the token check to ``app``."""

    @app.middleware("http")
    async def check_token(request: Request,
                          call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.monotonic()
        path = request.url.path
        who = "-"
        if path in OPEN_PATHS or path.startswith(COOKIE_PATHS_PREFIX):
            response = await call_next(request)
        else:
            scheme, _, secret = request.headers.get("authorization", "").partition(" ")
            info = None
            if scheme.lower() == "bearer" and secret.strip():
                info = await run_in_threadpool(_lookup, db, secret.strip())
            if info is None:
                response = problem(401, "a valid API token is required: send "
                                   "'Authorization: Bearer <token>'; an admin creates one with "
                                   "`triage tokens create --role viewer --name NAME`",
                                   headers=_CHALLENGE)
            else:
                who = info.name
                request.state.access = Access.for_role(
                    info.name, info.role, show_patient_ids=settings.api_show_patient_ids)
                response = await call_next(request)
        log.info("api request", extra={
            "method": request.method, "path": path, "status": response.status_code,
            "who": who, "ms": round((time.monotonic() - started) * 1000, 1)})
        return response


def caller(request: Request) -> Access:
    """The authenticated caller (set by the middleware)."""
    access = getattr(request.state, "access", None)
    if not isinstance(access, Access):  # only reachable if a route is added to OPEN_PATHS
        raise HTTPException(status_code=401, detail="a valid API token is required",
                            headers=_CHALLENGE)
    return access


def admin(access: Access = Depends(caller)) -> Access:
    """The caller, if its token has the admin role (403 otherwise)."""
    if not access.is_admin:
        raise HTTPException(status_code=403, detail=(
            f"token {access.who!r} has the {access.role.value} role; this needs an admin "
            "token (`triage tokens create --role admin --name NAME`)"))
    return access


def database(request: Request) -> Database:
    db = request.app.state.db
    assert isinstance(db, Database)
    return db


def settings_of(request: Request) -> Settings:
    settings = request.app.state.settings
    assert isinstance(settings, Settings)
    return settings
