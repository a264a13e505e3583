"""Exam assembly: instances into exams, the chosen image set, and exam readiness.

Everything here works from database state only (timestamps stored in UTC), so a restarted
listener continues where the previous one stopped.

Grouping: by Study Instance UID (default), or with ``TRIAGE_GROUP_BY=accession`` by accession
number + issuer: an instance joins the exam of the same Study Instance UID with that accession,
else the newest exam with that accession first received within ``TRIAGE_GROUP_WINDOW_HOURS``,
else it starts a new exam. Instances without an accession number group by Study Instance UID.

Chosen set: among the scorable, non-superseded instances of an exam, one instance per
(image class, laterality, view) slot is chosen for scoring: the latest acquired (Acquisition
DateTime, else Acquisition Date+Time, else Content Date+Time), then the latest received. The
choice is recorded as an audit event whenever a slot with several candidates changes hands.
``Study.chosen_set_digest`` is the digest of the current chosen set.

Readiness, per image class (ffdm, synthetic2d, dbt), evaluated for exams in ``receiving``:

* quiet: no instance arrived for ``TRIAGE_QUIET_SECONDS``; and no association that sent
  instances of the exam is still open (after ``TRIAGE_MAX_WAIT_SECONDS`` since the first
  instance, open associations no longer hold an exam back: some routers never close them);
* ready: some class has the four standard views (L-CC, R-CC, L-MLO, R-MLO) chosen;
  ``Study.image_classes`` lists the ready classes;
* ready and ``partial``: after max wait, some class has CC and MLO of at least one breast;
* skipped: quiet and no scorable instance (the reason summarises the instances' reasons),
  or after max wait no class has both views of any breast.

Re-open: only a scorable instance that changes the chosen set moves a scored, delivered,
failed or skipped exam back to ``receiving``. One that arrives while the exam is ready,
queued or scoring is stored unchosen with a ``chosen_set_change_pending`` audit event; when
the exam reaches scored/delivered/failed, :func:`evaluate_readiness` applies the change and
re-opens it. Loopback instances (our own outputs) are recorded and never re-open anything.

Duplicates: identical dataset bytes, or the same canonical content in another transfer
syntax (:mod:`triage.dicom.content`), add no row (an audit event instead; the caller may
delete its spooled copy). Different content under a known SOP Instance UID is a new version:
older versions are marked superseded and the newest is used.

Additions to the interface contract (keyword-only, optional): ``close_association`` and
``close_stale_associations`` take ``now``; ``open_association`` takes ``now`` and
``listener_pid``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol, cast

from pydicom.dataset import Dataset
from sqlalchemy import Table, and_, bindparam, exists, func, or_, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, aliased

from triage.config import GroupBy, Settings
from triage.db.models import Association, AuditEvent, Instance, StatusChange, Study
from triage.db.session import Database
from triage.db.states import set_status
from triage.dicom.classify import (
    SCORABLE_CLASSES,
    Classification,
    header_items,
    header_text,
    is_lossy,
    parse_offset,
)
from triage.dicom.content import canonical_digest
from triage.errors import DatabaseError, DecodeError, InvalidDicom, InvalidTransition
from triage.vocabulary import ExamStatus, Laterality, View

logger = logging.getLogger(__name__)

REOPENABLE = frozenset(
    {ExamStatus.SCORED, ExamStatus.DELIVERED, ExamStatus.FAILED, ExamStatus.SKIPPED}
)
IN_FLIGHT = frozenset({ExamStatus.READY, ExamStatus.QUEUED, ExamStatus.SCORING})
STANDARD_SLOTS: tuple[tuple[Laterality, View], ...] = (
    (Laterality.LEFT, View.CC),
    (Laterality.RIGHT, View.CC),
    (Laterality.LEFT, View.MLO),
    (Laterality.RIGHT, View.MLO),
)
CHOICE_RULE = "latest acquisition date/time, then latest received"

# audit event kinds written here
EVENT_DUPLICATE = "duplicate_instance"
EVENT_NEW_VERSION = "new_instance_version"
EVENT_VIEW_CHOICE = "view_choice"
EVENT_REOPENED = "exam_reopened"
EVENT_LOOPBACK = "loopback_received"
EVENT_PENDING_CHANGE = "chosen_set_change_pending"
EVENT_PENDING_RESOLVED = "chosen_set_change_resolved"
EVENT_STALE_ASSOCIATIONS = "stale_associations_closed"


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


# ---- header fields kept on the exam -----------------------------------------------------------
@dataclass(frozen=True)
class StudyHeader:
    """The study-level attributes of one instance that the exam row keeps."""

    study_instance_uid: str
    accession_number: str
    issuer_of_accession: str | None
    patient_id: str | None
    issuer_of_patient_id: str | None
    study_date: str | None
    study_time: str | None
    timezone_offset: str | None
    study_description: str | None
    procedure_codes: list[dict[str, str]]

    @classmethod
    def from_dataset(cls, ds: Dataset) -> StudyHeader:
        issuer = None
        for item in header_items(ds, "IssuerOfAccessionNumberSequence"):
            issuer = (header_text(item, "LocalNamespaceEntityID")
                      or header_text(item, "UniversalEntityID")) or None
        patient_issuer = header_text(ds, "IssuerOfPatientID") or None
        offset = header_text(ds, "TimezoneOffsetFromUTC")
        return cls(
            study_instance_uid=header_text(ds, "StudyInstanceUID"),
            accession_number=header_text(ds, "AccessionNumber"),
            issuer_of_accession=_clip(issuer, 64),
            patient_id=_clip(header_text(ds, "PatientID"), 64),
            issuer_of_patient_id=_clip(patient_issuer, 64),
            study_date=_clip(header_text(ds, "StudyDate"), 8),
            study_time=_clip(header_text(ds, "StudyTime"), 16),
            timezone_offset=offset if parse_offset(offset) else None,
            study_description=_clip(header_text(ds, "StudyDescription"), 200),
            procedure_codes=procedure_codes(ds),
        )


def _clip(text: str | None, length: int) -> str | None:
    return text[:length] if text else None


def procedure_codes(ds: Dataset) -> list[dict[str, str]]:
    """Procedure Code Sequence and Requested Procedure Code Sequence items, as plain dicts."""
    items = [*header_items(ds, "ProcedureCodeSequence"),
             *header_items(ds, "RequestedProcedureCodeSequence")]
    for request in header_items(ds, "RequestAttributesSequence"):
        items += header_items(request, "RequestedProcedureCodeSequence")
    codes: list[dict[str, str]] = []
    for item in items:
        code = {"scheme": header_text(item, "CodingSchemeDesignator"),
                "value": header_text(item, "CodeValue"),
                "meaning": header_text(item, "CodeMeaning")}
        if (code["value"] or code["meaning"]) and code not in codes:
            codes.append(code)
    return codes


def acquisition_datetime(ds: Dataset) -> str | None:
    """When the image was acquired, as sortable 'YYYYMMDDHHMMSS.ffffff' (UTC if offset given)."""
    candidates = [header_text(ds, "AcquisitionDateTime")]
    for date_kw, time_kw in (("AcquisitionDate", "AcquisitionTime"),
                             ("ContentDate", "ContentTime")):
        date = header_text(ds, date_kw)
        if date:
            candidates.append(date + header_text(ds, time_kw).replace(":", ""))
    for text in candidates:
        match = re.fullmatch(
            r"(\d{8})(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,6}))?([+-]\d{4})?", text.strip())
        if not match:
            continue
        date, hour, minute, second, frac, offset = match.groups()
        try:
            value = datetime(int(date[:4]), int(date[4:6]), int(date[6:8]), int(hour or 0),
                             int(minute or 0), int(second or 0), int((frac or "0").ljust(6, "0")))
        except ValueError:
            continue
        tz = parse_offset(offset) if offset else None
        if tz is not None:
            value = value.replace(tzinfo=tz).astimezone(UTC).replace(tzinfo=None)
        return value.strftime("%Y%m%d%H%M%S.%f")
    return None


def _int_or_none(ds: Dataset, keyword: str) -> int | None:
    text = header_text(ds, keyword)
    try:
        return int(text) if text else None
    except ValueError:
        return None


def _serialise_writers(session: Session) -> None:
    """On SQLite, take the write lock before reading what we are about to change.

    pysqlite starts a transaction only at the first write, so a read-then-write could act on
    stale rows and a SAVEPOINT opened outside a transaction would commit on release.
    ``BEGIN IMMEDIATE`` (waiting up to the busy timeout) serialises writers instead; on
    PostgreSQL the exam row is locked with SELECT ... FOR UPDATE.
    """
    connection = session.connection()
    if connection.dialect.name != "sqlite":
        return
    raw = connection.connection.dbapi_connection
    if raw is not None and not getattr(raw, "in_transaction", True):
        connection.exec_driver_sql("BEGIN IMMEDIATE")


# ---- grouping ---------------------------------------------------------------------------------
def _uid_key(study_uid: str) -> str:
    return f"uid:{study_uid}"


def _accession_prefix(header: StudyHeader) -> str:
    return f"acc:{header.issuer_of_accession or ''}|{header.accession_number}|"


def _find_study(session: Session, settings: Settings, header: StudyHeader,
                now: datetime) -> tuple[Study | None, str]:
    """The exam this instance belongs to (locked for update), or None and the key to create."""
    if settings.group_by is GroupBy.ACCESSION and header.accession_number:
        prefix = _accession_prefix(header)
        same_uid = session.scalars(
            select(Study)
            .where(Study.grouping_key.startswith(prefix, autoescape=True),
                   Study.study_instance_uid == header.study_instance_uid)
            .order_by(Study.first_received_at.desc()).limit(1).with_for_update()
        ).first()
        if same_uid is not None:
            return same_uid, same_uid.grouping_key
        window_start = now - timedelta(hours=settings.group_window_hours)
        in_window = session.scalars(
            select(Study)
            .where(Study.grouping_key.startswith(prefix, autoescape=True),
                   Study.first_received_at >= window_start)
            .order_by(Study.first_received_at.desc()).limit(1).with_for_update()
        ).first()
        if in_window is not None:
            return in_window, in_window.grouping_key
        return None, prefix + now.astimezone(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    key = _uid_key(header.study_instance_uid)
    study = session.scalars(select(Study).where(Study.grouping_key == key)
                            .with_for_update()).first()
    return study, key


def _get_or_create_study(session: Session, settings: Settings, header: StudyHeader,
                         now: datetime) -> Study:
    study, key = _find_study(session, settings, header, now)
    if study is not None:
        return study
    study = Study(
        grouping_key=key,
        study_instance_uid=header.study_instance_uid,
        status=ExamStatus.RECEIVING.value,
        first_received_at=now,
        last_received_at=now,
        created_at=now,
        updated_at=now,
        accession_numbers=[],
        procedure_codes=[],
        image_classes=[],
    )
    try:
        with session.begin_nested():
            session.add(study)
            session.flush()
    except IntegrityError:  # another association created the same exam at the same moment
        study, _ = _find_study(session, settings, header, now)
        if study is None:
            raise DatabaseError(
                f"exam {header.study_instance_uid}: could not create or find its row; "
                "check the database logs"
            ) from None
        return study
    session.add(StatusChange(study_id=study.id, from_status=None,
                             to_status=ExamStatus.RECEIVING.value,
                             reason="first instance received", at=now))
    return study


def _update_study_header(study: Study, header: StudyHeader) -> None:
    if header.accession_number and header.accession_number not in study.accession_numbers:
        study.accession_numbers = [*study.accession_numbers, header.accession_number]
    for field in ("issuer_of_accession", "patient_id", "issuer_of_patient_id", "study_date",
                  "study_time", "timezone_offset", "study_description"):
        if getattr(study, field) is None and getattr(header, field):
            setattr(study, field, getattr(header, field))
    new_codes = [c for c in header.procedure_codes if c not in study.procedure_codes]
    if new_codes:
        study.procedure_codes = [*study.procedure_codes, *new_codes]


# ---- chosen set -------------------------------------------------------------------------------
Slot = tuple[str, str, str]  # (image class, laterality, view)


_SCORABLE_CLASS_VALUES = frozenset(c.value for c in SCORABLE_CLASSES)
_STANDARD_VIEW_VALUES = frozenset((View.CC.value, View.MLO.value))
#: a new row's id is not known before its INSERT, but it is larger than every existing id
_NEW_ROW = 1 << 62


class _InstanceLike(Protocol):
    """An ``Instance`` or a row with its columns (what the chosen-set rules read)."""

    id: int
    image_class: str
    laterality: str | None
    view: str | None
    scorable: bool
    superseded: bool
    loopback: bool
    chosen: bool
    acquisition_datetime: str | None
    received_at: datetime
    sop_instance_uid: str
    content_digest: str
    version: int


def _recency(instance: _InstanceLike) -> tuple[str, datetime, int]:
    row_id = instance.id if instance.id is not None else _NEW_ROW
    return (instance.acquisition_datetime or "", instance.received_at, row_id)


def _is_candidate(inst: _InstanceLike) -> bool:
    """May this image be chosen for its view: scorable, current, not ours, a standard view."""
    return bool(inst.scorable and not inst.superseded and not inst.loopback and inst.laterality
                and inst.view in _STANDARD_VIEW_VALUES
                and inst.image_class in _SCORABLE_CLASS_VALUES)


def _slot(inst: _InstanceLike) -> Slot:
    return (inst.image_class, inst.laterality or "", inst.view or "")


def _candidates(instances: Iterable[Instance]) -> dict[Slot, list[Instance]]:
    slots: dict[Slot, list[Instance]] = {}
    for inst in instances:
        if _is_candidate(inst):
            slots.setdefault(_slot(inst), []).append(inst)
    return slots


def _winners(instances: Iterable[Instance]) -> dict[Slot, Instance]:
    return {slot: max(cands, key=_recency) for slot, cands in _candidates(instances).items()}


def _set_digest(winners: Mapping[Slot, _InstanceLike]) -> str | None:
    if not winners:
        return None
    lines = sorted(f"{'|'.join(slot)}|{inst.sop_instance_uid}|{inst.content_digest}"
                   for slot, inst in winners.items())
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _study_instances(session: Session, study_id: int) -> list[Instance]:
    return list(session.scalars(select(Instance).where(Instance.study_id == study_id)
                                .order_by(Instance.id)))


def _view_choice_event(study: Study, slot: Slot, winner: _InstanceLike,
                       candidates: Sequence[_InstanceLike], now: datetime) -> AuditEvent:
    return AuditEvent(
        at=now, kind=EVENT_VIEW_CHOICE, study_id=study.id,
        sop_instance_uid=winner.sop_instance_uid,
        detail={
            "image_class": slot[0], "laterality": slot[1], "view": slot[2],
            "chosen_instance_id": winner.id, "rule": CHOICE_RULE,
            "candidates": [
                {"instance_id": c.id, "sop_instance_uid": c.sop_instance_uid,
                 "version": c.version, "acquisition_datetime": c.acquisition_datetime,
                 "received_at": c.received_at.isoformat()}
                for c in sorted(candidates, key=_recency)
            ],
        },
    )


# Per-image statements of the common case, built once (plain Core on the tables: no ORM
# bookkeeping, no expression building per image; none of their rows is loaded as an entity
# in the session that runs them).
_INSTANCES = cast(Table, Instance.__table__)
_ASSOCIATIONS = cast(Table, Association.__table__)
#: the exam's chosen images plus every image of one view
_VIEW_CHOICE_ROWS = select(
    *(_INSTANCES.c[name] for name in (
        "id", "image_class", "laterality", "view", "scorable", "superseded", "loopback",
        "chosen", "acquisition_datetime", "received_at", "sop_instance_uid",
        "content_digest", "version"))
).where(_INSTANCES.c.study_id == bindparam("study_id"),
        or_(_INSTANCES.c.chosen.is_(True),
            and_(_INSTANCES.c.image_class == bindparam("image_class"),
                 _INSTANCES.c.laterality == bindparam("laterality"),
                 _INSTANCES.c.view == bindparam("view"))))
#: is there any stored version of this SOP Instance UID (almost never: skip the ORM load)
_HAS_VERSIONS = select(_INSTANCES.c.id).where(
    _INSTANCES.c.sop_instance_uid == bindparam("sop_instance_uid")).limit(1)
_SET_CHOSEN = (update(_INSTANCES).where(_INSTANCES.c.id.in_(bindparam("ids", expanding=True)))
               .values(chosen=bindparam("flag")))
_COUNT_RECEIVED = (update(_ASSOCIATIONS).where(_ASSOCIATIONS.c.id == bindparam("association_id"))
                   .values(instances_received=_ASSOCIATIONS.c.instances_received + 1))


def _insert_into_receiving(session: Session, study: Study, instance: Instance,
                           now: datetime) -> bool:
    """Insert a new instance (no earlier version) into a receiving exam; False if the same
    bytes were inserted concurrently (a duplicate).

    Equivalent to inserting it and re-applying the chosen-set rules to the whole exam
    (``_apply_chosen``), but reads only the exam's chosen images and the candidates of the
    new image's view: only that view's choice can change. The flags, digest and image
    classes are set before the single flush that inserts the row and updates the exam.
    """
    unchoose: list[int] = []
    choose: list[int] = []
    audit: list[_InstanceLike] = []
    if _is_candidate(instance):
        slot = _slot(instance)
        rows: Sequence[_InstanceLike] = session.connection().execute(  # type: ignore[assignment]
            _VIEW_CHOICE_ROWS, {"study_id": study.id, "image_class": slot[0],
                                "laterality": slot[1], "view": slot[2]}).all()
        in_slot = [r for r in rows if _slot(r) == slot and _is_candidate(r)]
        winner: _InstanceLike = max([*in_slot, instance], key=_recency)
        instance.chosen = winner is instance
        unchoose = [r.id for r in rows if r.chosen and _slot(r) == slot and r is not winner]
        if winner is not instance and not winner.chosen:
            choose = [winner.id]
        winners: dict[Slot, _InstanceLike] = {
            _slot(r): r for r in rows if r.chosen and _is_candidate(r) and _slot(r) != slot}
        winners[slot] = winner
        study.chosen_set_digest = _set_digest(winners)
        study.image_classes = sorted({s[0] for s in winners})
        audit = in_slot
    if not _flush_new(session, instance):
        return False
    for ids, flag in ((unchoose, False), (choose, True)):
        if ids:
            session.connection().execute(_SET_CHOSEN, {"ids": ids, "flag": flag})
    if audit:  # several images of this view: record which one is used and why
        chosen = instance if instance.chosen else max(audit, key=_recency)
        session.add(_view_choice_event(study, _slot(instance), chosen, [*audit, instance], now))
    return True


def _flush_new(session: Session, instance: Instance) -> bool:
    """INSERT ``instance``; False when the same bytes arrived on another association just now.

    On SQLite the write lock taken by ``_serialise_writers`` rules that race out, so no
    savepoint is needed; elsewhere the unique key decides inside a savepoint.
    """
    session.add(instance)
    if session.get_bind().dialect.name == "sqlite":
        session.flush()
        return True
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError:
        return False
    return True


def _apply_chosen(session: Session, study: Study, instances: Sequence[Instance],
                  now: datetime, new_instance_id: int | None = None) -> bool:
    """Set the chosen flags and digest from ``instances``; True when the set changed.

    A choice between several images of one view is audited when the chosen image changes
    or when a new candidate (``new_instance_id``) joins the view, whichever wins.
    """
    candidates = _candidates(instances)
    winners = {slot: max(cands, key=_recency) for slot, cands in candidates.items()}
    chosen_ids = {inst.id for inst in winners.values()}
    previous = {(i.image_class, i.laterality or "", i.view or ""): i
                for i in instances if i.chosen}
    for inst in instances:
        inst.chosen = inst.id in chosen_ids
    for slot, winner in winners.items():
        before = previous.get(slot)
        joined = any(c.id == new_instance_id for c in candidates[slot])
        if len(candidates[slot]) > 1 and (joined or before is None or before.id != winner.id):
            session.add(_view_choice_event(study, slot, winner, candidates[slot], now))
    digest = _set_digest(winners)
    changed = digest != study.chosen_set_digest
    study.chosen_set_digest = digest
    present = sorted({slot[0] for slot in winners})
    if ExamStatus(study.status) is ExamStatus.RECEIVING:
        study.image_classes = present
    return changed


def _reopen(session: Session, study: Study, reason: str, now: datetime,
            sop_instance_uid: str | None) -> None:
    previous = study.status
    set_status(session, study, ExamStatus.RECEIVING, reason, now=now)
    study.skip_reason = None
    study.partial = False
    session.add(AuditEvent(at=now, kind=EVENT_REOPENED, study_id=study.id,
                           sop_instance_uid=sop_instance_uid,
                           detail={"from_status": previous, "reason": reason,
                                   "chosen_set_digest": study.chosen_set_digest}))
    logger.info("exam re-opened", extra={"study_uid": study.study_instance_uid,
                                         "sop_instance_uid": sop_instance_uid})


# ---- ingest -----------------------------------------------------------------------------------
def _duplicate_of(priors: Sequence[Instance], stored: StoredObject) -> tuple[Instance, str] | None:
    """The stored version this object duplicates, and how it matched; None if it is new."""
    for prior in priors:
        if prior.content_digest == stored.raw_digest:
            return prior, "identical dataset bytes"
    if not priors:
        return None
    try:
        new_content = canonical_digest(stored.path)
    except (InvalidDicom, DecodeError) as exc:
        logger.warning("cannot compare content, keeping as a new version: %s", exc)
        return None
    for prior in sorted(priors, key=lambda p: p.version, reverse=True):
        try:
            if canonical_digest(Path(prior.path)) == new_content:
                syntaxes = f"{prior.transfer_syntax_uid} -> {stored.transfer_syntax_uid}"
                return prior, f"same content in another transfer syntax ({syntaxes})"
        except (InvalidDicom, DecodeError) as exc:
            logger.warning("stored version unreadable, cannot compare: %s", exc,
                           extra={"sop_instance_uid": prior.sop_instance_uid})
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
    _serialise_writers(session)
    if association_id is not None:
        session.connection().execute(_COUNT_RECEIVED, {"association_id": association_id})

    study = _get_or_create_study(session, settings, study_header, now)
    priors: list[Instance] = []
    if session.connection().execute(_HAS_VERSIONS, {"sop_instance_uid": sop_uid}).first():
        priors = list(session.scalars(select(Instance)
                                      .where(Instance.sop_instance_uid == sop_uid)
                                      .order_by(Instance.version)))
    duplicate = _duplicate_of(priors, stored)
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
              else _clip(classification.view_label, 8)),
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
        rows=_int_or_none(header, "Rows"),
        columns=_int_or_none(header, "Columns"),
        number_of_frames=_int_or_none(header, "NumberOfFrames"),
        acquisition_datetime=acquisition_datetime(header),
        calling_ae=calling_ae,
        received_at=now,
    )
    if not new_version and not classification.loopback \
            and ExamStatus(study.status) is ExamStatus.RECEIVING:  # the common case
        _update_study_header(study, study_header)
        study.last_received_at = max(study.last_received_at, now)
        if not _insert_into_receiving(session, study, instance, now):
            return _concurrent_duplicate(session, sop_uid, stored)
        return IngestOutcome(study_id=study.id, instance_id=instance.id, duplicate=False,
                             new_version=False, reopened=False)
    if not _flush_new(session, instance):
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
                _apply_chosen(session, other, _study_instances(session, other.id), now)

    _update_study_header(study, study_header)
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
        _apply_chosen(session, study, _study_instances(session, study.id), now, instance.id)
    elif instance.scorable:
        instances = _study_instances(session, study.id)
        if _set_digest(_winners(instances)) != study.chosen_set_digest:
            if status in REOPENABLE:
                _apply_chosen(session, study, instances, now, instance.id)
                _reopen(session, study, f"re-opened: new image {sop_uid} changes the chosen set",
                        now, sop_uid)
                reopened = True
            else:  # ready / queued / scoring: applied once that run is over
                session.add(AuditEvent(at=now, kind=EVENT_PENDING_CHANGE, study_id=study.id,
                                       sop_instance_uid=sop_uid,
                                       detail={"instance_id": instance.id,
                                               "status": status.value}))
    return IngestOutcome(study_id=study.id, instance_id=instance.id, duplicate=False,
                         new_version=new_version, reopened=reopened)


# ---- readiness --------------------------------------------------------------------------------
def _slots_text(slots: Iterable[tuple[str, str]]) -> str:
    return ", ".join(f"{lat}-{view}" for lat, view in sorted(slots)) or "none"


def _summarise_reasons(instances: Sequence[Instance]) -> str:
    counts = Counter(i.reason or "no reason recorded" for i in instances if not i.superseded)
    parts = [f"{n} × {reason}" if n > 1 else reason for reason, n in counts.most_common()]
    return "no scorable image: " + "; ".join(parts)


def _has_open_association(session: Session, study_id: int) -> bool:
    query = select(
        exists().where(Instance.study_id == study_id,
                       Instance.association_id == Association.id,
                       Association.is_open.is_(True))
    )
    return bool(session.scalar(query))


def _decide(session: Session, settings: Settings, study: Study, now: datetime) -> bool:
    """Apply the readiness rules to one locked exam in receiving; True when it changed."""
    if now - study.last_received_at < timedelta(seconds=settings.quiet_seconds):
        return False
    # max wait counts from the first instance, or from the last re-open
    receiving_since = session.scalar(
        select(func.max(StatusChange.at)).where(StatusChange.study_id == study.id,
                                                StatusChange.to_status == ExamStatus.RECEIVING.value))
    since = max(study.first_received_at, receiving_since or study.first_received_at)
    waited = now - since >= timedelta(seconds=settings.max_wait_seconds)
    if not waited and _has_open_association(session, study.id):
        return False
    instances = _study_instances(session, study.id)
    scorable = [i for i in instances if i.scorable and not i.superseded and not i.loopback]
    if not scorable:
        set_status(session, study, ExamStatus.SKIPPED, _summarise_reasons(instances), now=now)
        return True
    _apply_chosen(session, study, instances, now)  # flags are current; this re-checks them
    views: dict[str, set[tuple[str, str]]] = {}
    for inst in instances:
        if inst.chosen:
            views.setdefault(inst.image_class, set()).add((inst.laterality or "", inst.view or ""))
    standard = {(lat.value, view.value) for lat, view in STANDARD_SLOTS}
    complete = sorted(c for c, have in views.items() if standard <= have)
    if complete:
        study.image_classes = complete
        study.partial = False
        set_status(session, study, ExamStatus.READY,
                   "complete: " + "; ".join(f"{c} L-CC, L-MLO, R-CC, R-MLO" for c in complete),
                   now=now)
        return True
    if not waited:
        return False
    described = "; ".join(f"{c} has {_slots_text(have)}" for c, have in sorted(views.items()))
    usable = sorted(
        c for c, have in views.items()
        if any({(lat, View.CC.value), (lat, View.MLO.value)} <= have for lat in ("L", "R"))
    )
    if usable:
        study.image_classes = usable
        study.partial = True
        set_status(session, study, ExamStatus.READY,
                   f"partial exam after {settings.max_wait_seconds:g} s: {described}", now=now)
        return True
    set_status(session, study, ExamStatus.SKIPPED,
               f"incomplete exam after {settings.max_wait_seconds:g} s: {described}; need CC "
               "and MLO of at least one breast", now=now)
    return True


def _pending_change_study_ids(session: Session) -> list[int]:
    pending = aliased(AuditEvent)
    resolved = aliased(AuditEvent)
    query = select(Study.id).where(
        Study.status.in_([ExamStatus.SCORED.value, ExamStatus.DELIVERED.value,
                          ExamStatus.FAILED.value]),
        exists().where(
            pending.study_id == Study.id,
            pending.kind == EVENT_PENDING_CHANGE,
            Study.ready_at.is_not(None),
            pending.at >= Study.ready_at,
            ~exists().where(resolved.study_id == Study.id,
                            resolved.kind == EVENT_PENDING_RESOLVED,
                            resolved.at >= pending.at),
        ),
    )
    return list(session.scalars(query))


def _apply_pending(session: Session, study: Study, now: datetime) -> bool:
    if ExamStatus(study.status) not in REOPENABLE - {ExamStatus.SKIPPED}:
        return False
    instances = _study_instances(session, study.id)
    if _set_digest(_winners(instances)) != study.chosen_set_digest:
        _apply_chosen(session, study, instances, now)
        _reopen(session, study, "re-opened: images that arrived while the exam was being "
                "scored change the chosen set", now, None)
        return True
    session.add(AuditEvent(at=now, kind=EVENT_PENDING_RESOLVED, study_id=study.id,
                           detail={"result": "chosen set unchanged"}))
    return False


def evaluate_readiness(db: Database, settings: Settings, now: datetime) -> list[int]:
    """Apply the readiness rules to every exam in receiving; commit each change.

    Returns the ids of the exams whose status changed (ready, skipped, or re-opened because
    of images that arrived while they were being scored).
    """
    quiet_cutoff = now - timedelta(seconds=settings.quiet_seconds)
    with db.session() as session:
        receiving = list(session.scalars(
            select(Study.id).where(Study.status == ExamStatus.RECEIVING.value,
                                   Study.last_received_at <= quiet_cutoff)
            .order_by(Study.id)))
        pending = _pending_change_study_ids(session)
    changed: list[int] = []
    for study_id, action in [*((i, "decide") for i in receiving),
                             *((i, "pending") for i in pending)]:
        try:
            with db.session() as session:
                _serialise_writers(session)
                study = session.get(Study, study_id, with_for_update=True)
                if study is None:
                    continue
                if action == "decide":
                    if ExamStatus(study.status) is not ExamStatus.RECEIVING:
                        continue
                    did = _decide(session, settings, study, now)
                else:
                    did = _apply_pending(session, study, now)
                if did:
                    changed.append(study_id)
                    logger.info("exam status changed", extra={
                        "study_uid": study.study_instance_uid, "status": study.status})
        except (OperationalError, InvalidTransition) as exc:
            # another process changed the exam at the same moment; the next pass decides
            logger.warning("readiness check of exam %s deferred: %s", study_id, exc)
    return changed


# ---- associations -----------------------------------------------------------------------------
def open_association(session: Session, *, calling_ae: str, called_ae: str, peer_address: str,
                     peer_port: int, now: datetime | None = None,
                     listener_pid: int | None = None) -> int:
    """Record an accepted association; returns its id (flushed, not committed)."""
    row = Association(calling_ae=calling_ae[:16], called_ae=called_ae[:16],
                      peer_address=peer_address[:64], peer_port=peer_port,
                      listener_pid=os.getpid() if listener_pid is None else listener_pid,
                      started_at=now or datetime.now(UTC), is_open=True)
    session.add(row)
    session.flush()
    return row.id


def close_association(session: Session, association_id: int, reason: str, *,
                      now: datetime | None = None) -> None:
    """Mark an association ended (released, aborted, ...). Does not commit."""
    row = session.get(Association, association_id)
    if row is None:
        logger.warning("close of unknown association %s ignored", association_id)
        return
    row.is_open = False
    row.ended_at = now or datetime.now(UTC)
    row.end_reason = reason[:32]


def close_stale_associations(session: Session, reason: str = "listener restarted", *,
                             now: datetime | None = None) -> int:
    """At listener start-up: close every association still marked open. Does not commit."""
    at = now or datetime.now(UTC)
    ids = list(session.scalars(select(Association.id).where(Association.is_open.is_(True))))
    if not ids:
        return 0
    session.execute(update(Association).where(Association.id.in_(ids))
                    .values(is_open=False, ended_at=at, end_reason=reason[:32]))
    session.add(AuditEvent(at=at, kind=EVENT_STALE_ASSOCIATIONS,
                           detail={"association_ids": ids, "reason": reason}))
    return len(ids)


__all__ = [
    "IngestOutcome",
    "StoredObject",
    "StudyHeader",
    "acquisition_datetime",
    "close_association",
    "close_stale_associations",
    "evaluate_readiness",
    "open_association",
    "procedure_codes",
    "record_instance",
]
