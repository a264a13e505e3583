"""Recording one spooled instance in its exam (the listener's store handler, bound by the
service): grouping, duplicates and versions, the chosen set, re-opens.

Duplicates: identical dataset bytes, or the same canonical content in another transfer
syntax (:mod:`triage.dicom.content`), add no row (an audit event instead; the caller may
delete its spooled copy). Different content under a known SOP Instance UID is a new version:
older versions are marked superseded and the newest is used. Loopback instances (our own
outputs) are recorded and never re-open anything."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import cast

from pydicom.dataset import Dataset
from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.orm import Session

from triage.config import Settings
from triage.db.models import Association, AuditEvent, Instance, Study
from triage.db.session import serialise_writers
from triage.dicom.classify import (
    Classification,
    header_text,
    is_lossy,
)
from triage.dicom.content import canonical_digest
from triage.dicom.records import IngestOutcome, StoredObject
from triage.errors import DatabaseError, DecodeError, InvalidDicom
from triage.exams.chosen import (
    INSTANCES,
    apply_chosen,
    chosen_winners,
    flush_new,
    insert_into_receiving,
    set_digest,
    study_instances,
)
from triage.exams.grouping import get_or_create_study, update_study_header
from triage.exams.headers import StudyHeader, acquisition_datetime, clip, int_or_none
from triage.exams.reopen import EVENT_PENDING_CHANGE, REOPENABLE, reopen
from triage.vocabulary import ExamStatus

logger = logging.getLogger(__name__)

EVENT_DUPLICATE = "duplicate_instance"
EVENT_NEW_VERSION = "new_instance_version"
EVENT_LOOPBACK = "loopback_received"

_ASSOCIATIONS = cast(Table, Association.__table__)
#: is there any stored version of this SOP Instance UID (almost never: skip the ORM load)
_HAS_VERSIONS = select(INSTANCES.c.id).where(
    INSTANCES.c.sop_instance_uid == bindparam("sop_instance_uid")).limit(1)
_COUNT_RECEIVED = (update(_ASSOCIATIONS).where(_ASSOCIATIONS.c.id == bindparam("association_id"))
                   .values(instances_received=_ASSOCIATIONS.c.instances_received + 1))


def _canonical(path: Path, known: dict[str, str | None]) -> str | None:
    """The canonical content digest of a stored file (cached in ``known``; None if unreadable)."""
    key = str(path)
    if key not in known:
        try:
            known[key] = canonical_digest(path)
        except (InvalidDicom, DecodeError) as exc:
            logger.warning("cannot read content, not compared: %s", exc)
            known[key] = None
    return known[key]


def canonical_digests_before_lock(session: Session, sop_uid: str,
                                  stored: StoredObject) -> dict[str, str | None]:
    """Decode-and-hash work for a SOP Instance UID we already hold, done *before* the write
    lock is taken: the canonical digests of the new file and of its stored versions (a
    re-sent DBT decodes hundreds of frames; no other sender waits for that). Empty when
    the UID is new or an identical copy is already stored (the common cases)."""
    priors = session.execute(select(Instance.path, Instance.content_digest)
                             .where(Instance.sop_instance_uid == sop_uid)).all()
    if not priors or any(digest == stored.raw_digest for _, digest in priors):
        return {}
    known: dict[str, str | None] = {}
    for path in (stored.path, *(Path(p) for p, _ in priors)):
        _canonical(path, known)
    return known


def _duplicate_of(priors: Sequence[Instance], stored: StoredObject,
                  known: dict[str, str | None]) -> tuple[Instance, str] | None:
    """The stored version this object duplicates, and how it matched; None if it is new.
    ``known``: canonical digests computed before the lock (a version that arrived since is
    hashed here)."""
    for prior in priors:
        if prior.content_digest == stored.raw_digest:
            return prior, "identical dataset bytes"
    if not priors:
        return None
    new_content = _canonical(stored.path, known)
    if new_content is None:
        logger.warning("cannot compare content, keeping as a new version")
        return None
    for prior in sorted(priors, key=lambda p: p.version, reverse=True):
        if _canonical(Path(prior.path), known) == new_content:
            syntaxes = f"{prior.transfer_syntax_uid} -> {stored.transfer_syntax_uid}"
            return prior, f"same content in another transfer syntax ({syntaxes})"
    return None


def _concurrent_duplicate(session: Session, sop_uid: str, stored: StoredObject) -> IngestOutcome:
    """The same bytes arrived on another association just now: that row is the one."""
    winner = session.scalars(select(Instance).where(
        Instance.sop_instance_uid == sop_uid,
        Instance.content_digest == stored.raw_digest)).first()
    if winner is None:
        raise DatabaseError(f"instance {sop_uid}: insert refused by a unique key, but no row "
                            "with the same content exists; check the database logs")
    return IngestOutcome(study_id=winner.study_id, instance_id=None, duplicate=True,
                         new_version=False, reopened=False)


def record_instance(
    session: Session,
    settings: Settings,
    header: Dataset,
    stored: StoredObject,
    classification: Classification,
    *,
    association_id: int | None,
    calling_ae: str | None,
    now: datetime,
) -> IngestOutcome:
    """Record one spooled instance in its exam; see the module docstring. Does not commit."""
    sop_uid = header_text(header, "SOPInstanceUID")
    study_header = StudyHeader.from_dataset(header)
    if not sop_uid or not study_header.study_instance_uid:
        raise InvalidDicom(
            "instance lacks SOP Instance UID or Study Instance UID; it cannot be filed "
            "(the sender must send complete storage objects)"
        )
    known = canonical_digests_before_lock(session, sop_uid, stored)
    serialise_writers(session)
    if association_id is not None:
        session.connection().execute(_COUNT_RECEIVED, {"association_id": association_id})

    study = get_or_create_study(session, settings, study_header, now)
    priors: list[Instance] = []
    if session.connection().execute(_HAS_VERSIONS, {"sop_instance_uid": sop_uid}).first():
        priors = list(session.scalars(select(Instance)
                                      .where(Instance.sop_instance_uid == sop_uid)
                                      .order_by(Instance.version)))
    duplicate = _duplicate_of(priors, stored, known)
    if duplicate is not None:
        prior, how = duplicate
        session.add(AuditEvent(at=now, kind=EVENT_DUPLICATE, study_id=prior.study_id,
                               sop_instance_uid=sop_uid,
                               detail={"match": how, "instance_id": prior.id,
                                       "calling_ae": calling_ae,
                                       "association_id": association_id,
                                       "transfer_syntax_uid": stored.transfer_syntax_uid,
                                       "path": str(stored.path)}))
        if not classification.loopback and prior.study_id == study.id:
            study.last_received_at = max(study.last_received_at, now)
        logger.info("duplicate instance ignored", extra={"sop_instance_uid": sop_uid})
        return IngestOutcome(study_id=prior.study_id, instance_id=None, duplicate=True,
                             new_version=False, reopened=False)

    new_version = bool(priors)
    for prior in priors:
        prior.superseded = True
    instance = Instance(
        study_id=study.id,
        association_id=association_id,
        sop_instance_uid=sop_uid,
        sop_class_uid=header_text(header, "SOPClassUID")[:64],
        series_instance_uid=header_text(header, "SeriesInstanceUID")[:64] or None,
        transfer_syntax_uid=stored.transfer_syntax_uid[:64] or None,
        modality=header_text(header, "Modality")[:16] or None,
        image_class=classification.image_class.value,
        view=(classification.view.value if classification.view
              else clip(classification.view_label, 8)),
        laterality=classification.laterality.value if classification.laterality else None,
        scorable=classification.scorable and not classification.loopback,
        reason=classification.reason,
        chosen=False,
        superseded=False,
        loopback=classification.loopback,
        lossy=classification.lossy or is_lossy(header, stored.transfer_syntax_uid),
        version=max((p.version for p in priors), default=0) + 1,
        path=str(stored.path),
        content_digest=stored.raw_digest,
        size_bytes=stored.size_bytes,
        rows=int_or_none(header, "Rows"),
        columns=int_or_none(header, "Columns"),
        number_of_frames=int_or_none(header, "NumberOfFrames"),
        acquisition_datetime=acquisition_datetime(header),
        calling_ae=calling_ae,
        received_at=now,
    )
    if not new_version and not classification.loopback \
            and ExamStatus(study.status) is ExamStatus.RECEIVING:  # the common case
        update_study_header(study, study_header)
        study.last_received_at = max(study.last_received_at, now)
        if not insert_into_receiving(session, study, instance, now):
            return _concurrent_duplicate(session, sop_uid, stored)
        return IngestOutcome(study_id=study.id, instance_id=instance.id, duplicate=False,
                             new_version=False, reopened=False)
    if not flush_new(session, instance):
        return _concurrent_duplicate(session, sop_uid, stored)
    if new_version:
        session.add(AuditEvent(at=now, kind=EVENT_NEW_VERSION, study_id=study.id,
                               sop_instance_uid=sop_uid,
                               detail={"instance_id": instance.id, "version": instance.version,
                                       "superseded_instance_ids": [p.id for p in priors],
                                       "calling_ae": calling_ae}))
        for other_study_id in {p.study_id for p in priors} - {study.id}:
            other = session.get(Study, other_study_id)
            if other is not None and ExamStatus(other.status) is ExamStatus.RECEIVING:
                apply_chosen(session, other, study_instances(session, other.id), now)

    update_study_header(study, study_header)
    if classification.loopback:
        session.add(AuditEvent(at=now, kind=EVENT_LOOPBACK, study_id=study.id,
                               sop_instance_uid=sop_uid,
                               detail={"instance_id": instance.id, "calling_ae": calling_ae}))
        return IngestOutcome(study_id=study.id, instance_id=instance.id, duplicate=False,
                             new_version=new_version, reopened=False)

    study.last_received_at = max(study.last_received_at, now)
    status = ExamStatus(study.status)
    reopened = False
    if status is ExamStatus.RECEIVING:
        apply_chosen(session, study, study_instances(session, study.id), now, instance.id)
    elif instance.scorable:
        instances = study_instances(session, study.id)
        if set_digest(chosen_winners(instances)) != study.chosen_set_digest:
            if status in REOPENABLE:
                apply_chosen(session, study, instances, now, instance.id)
                reopen(session, study, f"re-opened: new image {sop_uid} changes the chosen set",
                        now, sop_uid)
                reopened = True
            else:  # ready / queued / scoring: applied once that run is over
                session.add(AuditEvent(at=now, kind=EVENT_PENDING_CHANGE, study_id=study.id,
                                       sop_instance_uid=sop_uid,
                                       detail={"instance_id": instance.id,
                                               "status": status.value}))
    return IngestOutcome(study_id=study.id, instance_id=instance.id, duplicate=False,
                         new_version=new_version, reopened=reopened)
