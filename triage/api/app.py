"""The application factory: ``create_app(settings, db)``.

Routers, one per resource, under ``/api/v1``: worklist, exams, scores (history), models,
audit; the dashboard's pages (:mod:`triage.api.dashboard`, ``/dashboard``); and the
operational routers of :mod:`triage.api.health` (``/healthz``, ``/readyz``) and
:mod:`triage.api.metrics` (``/metrics``) when present. Every path but ``/healthz`` needs a
bearer token (:mod:`triage.api.auth`; the dashboard takes the same tokens through its login
form and a cookie); the OpenAPI schema
(``/openapi.json``) declares the bearer scheme globally and lifts it for ``/healthz``.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.openapi.utils import get_openapi

from triage.api import audit, auth, catalogue, dashboard, exams, problems, scores, worklist
from triage.config import Settings
from triage.db import Database

log = logging.getLogger(__name__)
API_VERSION = "1"
#: routers other modules of this package provide (mounted when the module exists)
OPERATIONAL_ROUTERS = ("triage.api.health", "triage.api.metrics")


def _operational_routers() -> list[APIRouter]:
    routers = []
    for name in OPERATIONAL_ROUTERS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            log.warning("API router module missing; its endpoints are not served",
                        extra={"router_module": name})
            continue
        routers.append(module.router)
    return routers


def create_app(settings: Settings, db: Database) -> FastAPI:
    """The API application on ``db`` with ``settings``."""
    from triage import __version__

    app = FastAPI(
        title="triage API", version=__version__, docs_url=None, redoc_url=None,
        description=(
            "Screening mammography worklist triage: worklist, exams, score history, models, "
            "query audit, health and metrics. Investigational: not a diagnosis. Send "
            "`Authorization: Bearer <token>` (`triage tokens create`); only /healthz is open."),
    )
    app.state.settings = settings
    app.state.db = db
    problems.install(app)
    auth.install(app, settings, db)
    for router in (worklist.router, exams.router, scores.router, catalogue.router, audit.router,
                   dashboard.router, *_operational_routers()):
        app.include_router(router)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version,
                                 description=app.description, routes=app.routes)
            schema.setdefault("components", {}).setdefault("securitySchemes", {})[
                auth.SECURITY_SCHEME] = {
                    "type": "http", "scheme": "bearer",
                    "description": "an API token from `triage tokens create` (viewer or admin)"}
            schema["security"] = [{auth.SECURITY_SCHEME: []}]
            for path in auth.OPEN_PATHS:
                for operation in schema.get("paths", {}).get(path, {}).values():
                    operation["security"] = []
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
