"""The contract between the listener and whoever files a stored object into an exam.

The listener spools an object (:class:`StoredObject`), then calls the store handler it was
bound with (the service binds ``triage.exams.record_instance``), which answers with an
:class:`IngestOutcome`. ``triage.dicom`` never imports the exam logic: the handler is
injected, as pynetdicom binds event handlers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from pydicom.dataset import Dataset
from sqlalchemy.orm import Session

from triage.config import Settings
from triage.dicom.classify import Classification


@dataclass(frozen=True)
class StoredObject:
    """What the spool produced for one received object."""

    path: Path  # final path in the spool (already fsynced + renamed)
    raw_digest: str  # sha256 of the dataset bytes after the file meta group
    size_bytes: int
    transfer_syntax_uid: str


@dataclass(frozen=True)
class IngestOutcome:
    study_id: int
    instance_id: int | None  # None when it was an identical duplicate
    duplicate: bool  # identical content already stored -> no new row
    new_version: bool  # same SOP Instance UID, different content -> both kept
    reopened: bool  # a scored/delivered/failed/skipped exam went back to receiving


class RecordInstance(Protocol):
    """Files one spooled instance in its exam (does not commit)."""

    def __call__(self, session: Session, settings: Settings, header: Dataset,
                 stored: StoredObject, classification: Classification, *,
                 association_id: int | None, calling_ae: str | None,
                 now: datetime) -> IngestOutcome: ...


#: Applies the readiness rules to every exam in receiving (the listener's timer calls it).
EvaluateReadiness = Callable[..., list[int]]
