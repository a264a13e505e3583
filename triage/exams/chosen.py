"""The chosen image set of an exam.

Among the scorable, non-superseded instances of an exam, one instance per (image class,
laterality, view) slot is chosen for scoring: the latest acquired (Acquisition DateTime, else
Acquisition Date+Time, else Content Date+Time), then the latest received. The choice is
recorded as an audit event whenever a slot with several candidates changes hands.
``Study.chosen_set_digest`` is the digest of the current chosen set: it covers each chosen
image's slot, SOP Instance UID and content digest (the sha256 of its dataset bytes), so a
corrected image under the same SOP Instance UID changes it."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Protocol, cast

from sqlalchemy import Table, and_, bindparam, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from triage.db.models import AuditEvent, Instance, Study
from triage.dicom.classify import (
    SCORABLE_CLASSES,
)
from triage.vocabulary import ExamStatus, View

logger = logging.getLogger(__name__)



Slot = tuple[str, str, str]  # (image class, laterality, view)

CHOICE_RULE = "latest acquisition date/time, then latest received"
EVENT_VIEW_CHOICE = "view_choice"



_SCORABLE_CLASS_VALUES = frozenset(c.value for c in SCORABLE_CLASSES)
_STANDARD_VIEW_VALUES = frozenset((View.CC.value, View.MLO.value))
#: a new row's id is not known before its INSERT, but it is larger than every existing id
_NEW_ROW = 1 << 62


class InstanceLike(Protocol):
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


def recency(instance: InstanceLike) -> tuple[str, datetime, int]:
    row_id = instance.id if instance.id is not None else _NEW_ROW
    return (instance.acquisition_datetime or "", instance.received_at, row_id)


def is_candidate(inst: InstanceLike) -> bool:
    """May this image be chosen for its view: scorable, current, not ours, a standard view."""
    return bool(inst.scorable and not inst.superseded and not inst.loopback and inst.laterality
                and inst.view in _STANDARD_VIEW_VALUES
                and inst.image_class in _SCORABLE_CLASS_VALUES)


def slot_of(inst: InstanceLike) -> Slot:
    return (inst.image_class, inst.laterality or "", inst.view or "")


def candidates_by_slot(instances: Iterable[Instance]) -> dict[Slot, list[Instance]]:
    slots: dict[Slot, list[Instance]] = {}
    for inst in instances:
        if is_candidate(inst):
            slots.setdefault(slot_of(inst), []).append(inst)
    return slots


def chosen_winners(instances: Iterable[Instance]) -> dict[Slot, Instance]:
    return {slot: max(cands, key=recency) for slot, cands in candidates_by_slot(instances).items()}


def set_digest(winners: Mapping[Slot, InstanceLike]) -> str | None:
    if not winners:
        return None
    lines = sorted(f"{'|'.join(slot)}|{inst.sop_instance_uid}|{inst.content_digest}"
                   for slot, inst in winners.items())
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def study_instances(session: Session, study_id: int) -> list[Instance]:
    return list(session.scalars(select(Instance).where(Instance.study_id == study_id)
                                .order_by(Instance.id)))


def view_choice_event(study: Study, slot: Slot, winner: InstanceLike,
                       candidates: Sequence[InstanceLike], now: datetime) -> AuditEvent:
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
                for c in sorted(candidates, key=recency)
            ],
        },
    )


# Per-image statements of the common case, built once (plain Core on the tables: no ORM
# bookkeeping, no expression building per image; none of their rows is loaded as an entity
# in the session that runs them).
INSTANCES = cast(Table, Instance.__table__)
#: the exam's chosen images plus every image of one view
_VIEW_CHOICE_ROWS = select(
    *(INSTANCES.c[name] for name in (
        "id", "image_class", "laterality", "view", "scorable", "superseded", "loopback",
        "chosen", "acquisition_datetime", "received_at", "sop_instance_uid",
        "content_digest", "version"))
).where(INSTANCES.c.study_id == bindparam("study_id"),
        or_(INSTANCES.c.chosen.is_(True),
            and_(INSTANCES.c.image_class == bindparam("image_class"),
                 INSTANCES.c.laterality == bindparam("laterality"),
                 INSTANCES.c.view == bindparam("view"))))
_SET_CHOSEN = (update(INSTANCES).where(INSTANCES.c.id.in_(bindparam("ids", expanding=True)))
               .values(chosen=bindparam("flag")))


def insert_into_receiving(session: Session, study: Study, instance: Instance,
                           now: datetime) -> bool:
    """Insert a new instance (no earlier version) into a receiving exam; False if the same
    bytes were inserted concurrently (a duplicate).

    Equivalent to inserting it and re-applying the chosen-set rules to the whole exam
    (``apply_chosen``), but reads only the exam's chosen images and the candidates of the
    new image's view: only that view's choice can change. The flags, digest and image
    classes are set before the single flush that inserts the row and updates the exam.
    """
    unchoose: list[int] = []
    choose: list[int] = []
    audit: list[InstanceLike] = []
    if is_candidate(instance):
        slot = slot_of(instance)
        rows: Sequence[InstanceLike] = session.connection().execute(  # type: ignore[assignment]
            _VIEW_CHOICE_ROWS, {"study_id": study.id, "image_class": slot[0],
                                "laterality": slot[1], "view": slot[2]}).all()
        in_slot = [r for r in rows if slot_of(r) == slot and is_candidate(r)]
        winner: InstanceLike = max([*in_slot, instance], key=recency)
        instance.chosen = winner is instance
        unchoose = [r.id for r in rows if r.chosen and slot_of(r) == slot and r is not winner]
        if winner is not instance and not winner.chosen:
            choose = [winner.id]
        winners: dict[Slot, InstanceLike] = {
            slot_of(r): r for r in rows if r.chosen and is_candidate(r) and slot_of(r) != slot}
        winners[slot] = winner
        study.chosen_set_digest = set_digest(winners)
        study.image_classes = sorted({s[0] for s in winners})
        audit = in_slot
    if not flush_new(session, instance):
        return False
    for ids, flag in ((unchoose, False), (choose, True)):
        if ids:
            session.connection().execute(_SET_CHOSEN, {"ids": ids, "flag": flag})
    if audit:  # several images of this view: record which one is used and why
        chosen = instance if instance.chosen else max(audit, key=recency)
        session.add(view_choice_event(study, slot_of(instance), chosen, [*audit, instance], now))
    return True


def flush_new(session: Session, instance: Instance) -> bool:
    """INSERT ``instance``; False when the same bytes arrived on another association just now.

    On SQLite the write lock taken by ``serialise_writers`` rules that race out, so no
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


def apply_chosen(session: Session, study: Study, instances: Sequence[Instance],
                  now: datetime, new_instance_id: int | None = None) -> bool:
    """Set the chosen flags and digest from ``instances``; True when the set changed.

    A choice between several images of one view is audited when the chosen image changes
    or when a new candidate (``new_instance_id``) joins the view, whichever wins.
    """
    candidates = candidates_by_slot(instances)
    winners = {slot: max(cands, key=recency) for slot, cands in candidates.items()}
    chosen_ids = {inst.id for inst in winners.values()}
    previous = {(i.image_class, i.laterality or "", i.view or ""): i
                for i in instances if i.chosen}
    for inst in instances:
        inst.chosen = inst.id in chosen_ids
    for slot, winner in winners.items():
        before = previous.get(slot)
        joined = any(c.id == new_instance_id for c in candidates[slot])
        if len(candidates[slot]) > 1 and (joined or before is None or before.id != winner.id):
            session.add(view_choice_event(study, slot, winner, candidates[slot], now))
    digest = set_digest(winners)
    changed = digest != study.chosen_set_digest
    study.chosen_set_digest = digest
    present = sorted({slot[0] for slot in winners})
    if ExamStatus(study.status) is ExamStatus.RECEIVING:
        study.image_classes = present
    return changed
