"""The HTTP face: FastAPI app, routers per resource, health and metrics, dashboard."""
