"""Structured logging: one JSON object per line with the ``extra`` fields (UIDs, AEs).

Every line about a study carries its Study Instance UID under one key, ``study_instance_uid``
(:data:`STUDY_KEY`): call sites pass it in ``extra``, and code that runs for one study (the
scoring of an exam) runs inside :func:`study_context`, so the lines of the layers below it
(decoding, preprocessing, models, outputs), which know only SOP Instance UIDs, carry it too.
``triage logs --study UID`` finds a study's lines by that key in the log file
(``TRIAGE_LOG_FILE``: JSON lines, rotated).

Never log patient names or other demographics: log UIDs and AE titles instead.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

#: the one key under which a log line names its study
STUDY_KEY = "study_instance_uid"

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
_installed: list[logging.Handler] = []
_current_study: ContextVar[str | None] = ContextVar("triage_study_instance_uid", default=None)


@contextmanager
def study_context(study_instance_uid: str) -> Iterator[None]:
    """Lines logged inside the block (same thread or task) carry ``study_instance_uid``."""
    token = _current_study.set(study_instance_uid)
    try:
        yield
    finally:
        _current_study.reset(token)


class StudyFilter(logging.Filter):
    """Adds the current :func:`study_context` UID to a record that does not name its study."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, STUDY_KEY, None) is None:
            current = _current_study.get()
            if current is not None:
                setattr(record, STUDY_KEY, current)
        return True


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {key: value for key, value in vars(record).items()
            if key not in _STANDARD and not key.startswith("_")}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        payload.update(_extras(record))
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


class PlainFormatter(logging.Formatter):
    """``time LEVEL logger message key=value ...`` (the extras, the study UID among them)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extras = " ".join(f"{k}={v}" for k, v in _extras(record).items())
        if not extras:
            return text
        head, sep, tail = text.partition("\n")  # a traceback stays below the first line
        return f"{head} {extras}{sep}{tail}"


def setup_logging(level: str = "INFO", *, json_lines: bool = True, log_file: Path | None = None,
                  max_bytes: int = 50 * 2**20, backups: int = 5) -> None:
    """Log to stderr (JSON lines or plain) and, when ``log_file`` is given, also to that file
    as JSON lines, rotated at ``max_bytes`` keeping ``backups`` old files.

    Raises OSError when the log file cannot be opened for appending.
    """
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    handlers[0].setFormatter(JsonFormatter() if json_lines else PlainFormatter())
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        rotating = logging.handlers.RotatingFileHandler(
            log_file, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
        rotating.setFormatter(JsonFormatter())
        handlers.append(rotating)
    root = logging.getLogger()
    while _installed:  # the handlers of an earlier set-up (its log file stays open otherwise)
        _installed.pop().close()
    for handler in handlers:
        handler.addFilter(StudyFilter())
    _installed.extend(handlers)
    root.handlers[:] = handlers
    root.setLevel(level.upper())
    for noisy in ("pynetdicom", "alembic", "celery", "kombu"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def log_files(path: Path) -> list[Path]:
    """The log file and its rotated backups that exist, oldest first."""
    backups = []
    for candidate in path.parent.glob(path.name + ".*"):
        suffix = candidate.name[len(path.name) + 1:]
        if suffix.isdigit():
            backups.append((int(suffix), candidate))
    files = [p for _, p in sorted(backups, reverse=True)]
    return [*files, path] if path.exists() else files


def study_lines(paths: Iterable[Path], study_instance_uid: str) -> Iterator[dict[str, Any]]:
    """The JSON log entries of one study, in file order (lines that are no JSON are skipped)."""
    for path in paths:
        with path.open(encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if study_instance_uid not in line:
                    continue
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if isinstance(entry, dict) and entry.get(STUDY_KEY) == study_instance_uid:
                    yield entry


def format_entry(entry: dict[str, Any]) -> str:
    """One JSON log entry as a line a person reads: time, level, logger, message, extras."""
    head = [str(entry.get(k, "")) for k in ("ts", "level", "logger", "msg")]
    rest = [f"{k}={v}" for k, v in entry.items()
            if k not in ("ts", "level", "logger", "msg", "exc", STUDY_KEY)]
    text = " ".join([*head, *rest])
    if entry.get("exc"):
        text += "\n" + str(entry["exc"])
    return text
