"""`triage score-folder DIR [--out DIR]`: offline batch scoring."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import typer
from tqdm import tqdm

from triage.batch import score_folder
from triage.cli.common import configure_logging, echo_json, handled_errors, open_database, settings_or_exit
from triage.db import migrate
from triage.pipeline import load_ensemble


def _bar(items: Iterable[object], desc: str, total: int) -> Iterable[object]:
    return tqdm(items, desc=desc, total=total, unit="item", leave=True)


def score_folder_cmd(
    folder: Path = typer.Argument(..., exists=True, file_okay=False, help="folder of DICOM files"),
    out: Path | None = typer.Option(None, "--out", help="write one <StudyInstanceUID>.json per exam"),
) -> None:
    """Group the folder's DICOM files into exams as the listener does, score every ready exam
    (files are read in place) and store the results in the database."""
    settings = settings_or_exit()
    configure_logging(settings)
    with handled_errors():
        settings.prepare_directories()
        migrate.upgrade(settings.resolved_database_url)
        ensemble = load_ensemble(settings)
        report = score_folder(open_database(settings), settings, folder, ensemble, out, _bar)
    echo_json({"files_seen": report.files_seen, "files_recorded": report.files_recorded,
               "unreadable": report.unreadable, "exams": report.outcomes})
    if report.unreadable:
        raise typer.Exit(1)
