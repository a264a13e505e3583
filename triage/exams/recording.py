"""Recording one spooled instance in its exam (the listener's store handler, bound by the
service): grouping, duplicates and versions, patient identity, the chosen set, re-opens.

Duplicates: identical dataset bytes, or the same canonical content in another transfer
syntax (:mod:`triage.dicom.content`), add no row (an audit event instead; the caller may
delete its spooled copy). Different content under a known SOP Instance UID is a new version:
older versions are marked superseded and the newest is used. Loopback instances (our own
outputs) are recorded and never re-open anything.

Patient identity (rules in :mod:`triage.exams.identity`): an image whose Patient ID / Issuer
conflicts with its exam's patient, or with a stored version of its SOP Instance UID, is
kept (row and bytes; the sender is answered success) but never scorable, never chosen and
never supersedes anything; the exam is held (:mod:`triage.exams.hold`) until an admin
releases it. Images that arrive for a held exam are recorded; the release assembles them."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import cast

from pydicom.dataset import Dataset
from sqlalchemy import Table, bindparam, func, select, update
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
from triage.exams.hold import hold
from triage.exams.identity import (
    CONFLICT_PREFIX,
    EVENT_IDENTITY_CONFLICT,
    IdentityConflict,
    PatientIdentity,
    find_conflict,
    hold_reason,
)
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


def _reason(conflict: IdentityConflict | None, classification: Classification) -> str | None:
    """Why the image is not scored: a patient identity conflict first, then its classification."""
    if conflict is None:
        return classification.reason
    return "; ".join(r for r in (conflict.reason, classification.reason) if r)


def _record_conflict(session: Session, study: Study, instance: Instance,
                     conflict: IdentityConflict, stored: StoredObject, priors: Sequence[Instance],
                     *, association_id: int | None, calling_ae: str | None,
                     now: datetime) -> IngestOutcome:
    """Keep an image whose patient identity conflicts (unscorable, superseding nothing),
    audit it and hold its exam. Log lines name UIDs only, never patient identifiers."""
    sop_uid = instance.sop_instance_uid
    if not flush_new(session, instance):
        return _concurrent_duplicate(session, sop_uid, stored)
    study.last_received_at = max(study.last_received_at, now)
    session.add(AuditEvent(at=now, kind=EVENT_IDENTITY_CONFLICT, study_id=study.id,
                           sop_instance_uid=sop_uid,
                           detail={"conflict": conflict.kind.value, "instance_id": instance.id,
                                   "existing": conflict.existing.as_dict(),
                                   "incoming": conflict.incoming.as_dict(),
                                   "stored_version_ids": [p.id for p in priors],
                                   "exam_status": study.status, "calling_ae": calling_ae,
                                   "association_id": association_id}))
    excluded = session.scalar(select(func.count()).select_from(INSTANCES).where(
        INSTANCES.c.study_id == study.id,
        INSTANCES.c.reason.startswith(CONFLICT_PREFIX, autoescape=True)))
    hold(session, study, hold_reason(study.study_instance_uid, conflict, sop_uid,
                                     int(excluded or 0)), now)
    logger.warning("patient identity conflict: image kept unscorable, exam held",
                   extra={"study_instance_uid": study.study_instance_uid, "sop_instance_uid": sop_uid,
                          "conflict": conflict.kind.value})
    return IngestOutcome(study_id=study.id, instance_id=instance.id, duplicate=False,
                         new_version=bool(priors), reopened=False)


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

    patient = PatientIdentity.of_header(study_header)
    conflict = None if classification.loopback else find_conflict(
        PatientIdentity(study.patient_id, study.issuer_of_patient_id), patient, priors)
    new_version = bool(priors)
    if conflict is None:
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
        scorable=classification.scorable and not classification.loopback and conflict is None,
        reason=_reason(conflict, classification),
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
        patient_id=patient.patient_id,
        issuer_of_patient_id=patient.issuer,
    )
    if conflict is not None:
        return _record_conflict(session, study, instance, conflict, stored, priors,
                                association_id=association_id, calling_ae=calling_ae, now=now)
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
    elif status is ExamStatus.HELD:
        pass  # recorded; the release applies the chosen-set rules to everything held
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
