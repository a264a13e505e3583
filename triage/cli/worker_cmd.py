"""`triage worker`: a Celery worker on queue ``gpu`` (needs TRIAGE_BROKER_URL)."""

from __future__ import annotations

import socket

import typer

from triage.cli.common import configure_logging, settings_or_exit


def worker(
    concurrency: int = typer.Option(1, min=1, help="exams scored at once (1 per GPU)"),
    loglevel: str = typer.Option("INFO"),
) -> None:
    """Score exams from the broker until stopped (SIGTERM finishes the current exam)."""
    settings = settings_or_exit()
    if not settings.broker_url:
        typer.echo("error: TRIAGE_BROKER_URL is empty; set it to redis://HOST:PORT/DB, or use "
                   "`triage serve`, whose embedded worker needs no broker", err=True)
        raise typer.Exit(2)
    configure_logging(settings)
    from workers.celery_app import make_celery

    app = make_celery(settings)
    app.worker_main([
        "worker", "--queues", "gpu", "--concurrency", str(concurrency), "--pool", "prefork",
        "--loglevel", loglevel, "--without-gossip", "--without-mingle",
        "--hostname", f"triage@{socket.gethostname()}",
    ])
