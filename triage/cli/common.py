"""Helpers shared by command modules: settings, database, errors to exit codes."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, TypeVar

import typer

from triage.config import Settings, load_settings
from triage.db import Database, create_database
from triage.errors import TriageError

T = TypeVar("T")


def settings_or_exit() -> Settings:
    try:
        return load_settings()
    except TriageError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


@contextmanager
def handled_errors() -> Iterator[None]:
    """Turn product errors into a one-line message on stderr and exit code 1."""
    try:
        yield
    except TriageError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


def open_database(settings: Settings) -> Database:
    return create_database(settings.resolved_database_url)


def echo_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


def configure_logging(settings: Settings) -> None:
    """Structured (JSON lines) or plain logging on stderr, as the settings say."""
    from triage.logs import setup_logging

    setup_logging(settings.log_level, json_lines=settings.log_json)


def stop_event_on_signals() -> threading.Event:
    """An event set by SIGINT (Ctrl-C) or SIGTERM, for commands that serve until stopped."""
    stop = threading.Event()
    log = logging.getLogger("triage.cli")

    def _stop(signum: int, _frame: FrameType | None) -> None:
        log.info("stopping", extra={"signal": signal.Signals(signum).name})
        stop.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    return stop


def run_guarded(fn: Callable[[], T]) -> T:
    with handled_errors():
        return fn()


__all__ = ["configure_logging", "echo_json", "handled_errors", "open_database",
           "run_guarded", "settings_or_exit", "stop_event_on_signals", "sys"]
