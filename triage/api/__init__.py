"""The HTTP face: FastAPI app, routers per resource, health and metrics, dashboard.

``create_app(settings, db)`` in :mod:`triage.api.app` builds the application (a router per
resource, each calling the library's query functions); :mod:`triage.api.server` runs it with
uvicorn (``triage api``, or inside ``triage serve`` and ``triage listen``).
"""
