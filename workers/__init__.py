"""Celery app and tasks: thin wrappers over ``triage.pipeline``."""
