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
from sqlalchemy.exc import OperationalError, ProgrammingError, SQLAlchemyError
from typer.core import TyperGroup

from triage import __version__
from triage.config import Settings, load_settings, unknown_variables
from triage.db import Database, create_database
from triage.errors import TriageError

T = TypeVar("T")


def warn_unknown_variables() -> None:
    """A ``TRIAGE_*`` variable that names no setting is most likely a typo: say so."""
    for name, close in unknown_variables().items():
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        typer.echo(f"warning: {name} is not a triage setting and is ignored{hint}; "
                   "`triage config show` lists the settings", err=True)


def settings_or_exit() -> Settings:
    try:
        settings = load_settings()
    except TriageError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    warn_unknown_variables()
    return settings


_WHERE_DB = ("TRIAGE_DATABASE_URL (or TRIAGE_DATA_DIR, whose triage.db is the default SQLite "
             "database)")


def explain_database_error(exc: SQLAlchemyError) -> str:
    """What an operator should set or run when the database cannot be used."""
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
    lowered = text.lower()
    if "no such table" in lowered or "undefinedtable" in type(orig).__name__.lower() or (
            "relation" in lowered and "does not exist" in lowered):
        return (f"the database has no triage schema yet ({text}): run `triage db upgrade` with "
                f"the same {_WHERE_DB}")
    if "readonly" in lowered or "read-only" in lowered or "read only" in lowered:
        return (f"the database is read-only ({text}): set {_WHERE_DB} to a location this user "
                "can write")
    if "unable to open database file" in lowered:
        return (f"cannot open the SQLite database ({text}): set TRIAGE_DATA_DIR to a writable "
                "directory (its triage.db is the database) or TRIAGE_DATABASE_URL, then run "
                "`triage db upgrade`")
    if isinstance(exc, OperationalError):
        return (f"the database is not reachable ({text}): check TRIAGE_DATABASE_URL (host, port, "
                "user, password, database name) and that the server is running")
    return f"database error ({text}): check {_WHERE_DB} and run `triage db upgrade`"


@contextmanager
def handled_errors() -> Iterator[None]:
    """Turn product and operator errors into a one-line message on stderr and exit code 1.

    Operator errors are a database that cannot be opened, reached or written, or lacks the
    schema, and a file or directory that cannot be read or written: the message says what to
    set. Anything else is a bug and keeps its traceback.
    """
    try:
        yield
    except TriageError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    except (OperationalError, ProgrammingError) as exc:
        typer.echo(f"error: {explain_database_error(exc)}", err=True)
        raise typer.Exit(1) from exc
    except (PermissionError, FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
        what = f"{exc.filename}: " if exc.filename else ""
        typer.echo(f"error: {what}{exc.strerror or exc}: check TRIAGE_DATA_DIR and the paths "
                   "given, and that this user may read and write them", err=True)
        raise typer.Exit(1) from exc


class GuardedGroup(TyperGroup):
    """The root command group: every command runs inside :func:`handled_errors`, so an
    operator's mistake prints what to set instead of a traceback."""

    def invoke(self, ctx: Any) -> Any:  # click's Context (typer vendors click)
        with handled_errors():
            return super().invoke(ctx)


def print_version(value: bool) -> None:
    """``triage --version``: the package version, then exit."""
    if value:
        typer.echo(f"triage {__version__}")
        raise typer.Exit()


def open_database(settings: Settings) -> Database:
    return create_database(settings.resolved_database_url)


def echo_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


def configure_logging(settings: Settings) -> None:
    """Structured (JSON lines) or plain logging on stderr, as the settings say."""
    from triage.logs import setup_logging

    try:
        setup_logging(settings.log_level, json_lines=settings.log_json,
                      log_file=settings.log_file,
                      max_bytes=int(settings.log_file_max_mb * 2**20),
                      backups=settings.log_file_backups)
    except OSError as exc:
        typer.echo(f"error: TRIAGE_LOG_FILE {settings.log_file} cannot be written "
                   f"({exc.strerror or exc}): set it to a file this user can write, or leave it "
                   "empty to log to stderr only", err=True)
        raise typer.Exit(2) from exc


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


__all__ = ["GuardedGroup", "configure_logging", "echo_json", "explain_database_error",
           "handled_errors", "open_database", "print_version", "run_guarded", "settings_or_exit",
           "stop_event_on_signals", "sys", "warn_unknown_variables"]
