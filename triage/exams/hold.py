"""Held exams: an exam that needs an admin (today: a patient identity conflict, see
``identity``) is moved to ``held`` from any status, with a reason. Readiness ignores it and
the dispatcher never queues it; a worker scoring it when it is held finds the exam no
longer ``scoring`` and stores nothing.

Release (``triage exams release UID --reason TEXT``) is the only way out: the admin has
corrected the data at its source, and the exam goes back to ``receiving`` with the
chosen-set rules applied again to its images. Images stored as conflicts stay excluded
(they are never scorable); everything else that arrived, before or during the hold, is
assembled as usual, and the readiness rules decide again (max wait counts from the
release). An exam that was scored before the hold is scored again only through that
path: the same images and model set give the same run (runs are idempotent). The release
is audited (``exam_released``: who, why, the hold reason it ends, the excluded images).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from triage.db.models import AuditEvent, Study
from triage.db.session import serialise_writers
from triage.db.states import set_status
from triage.errors import InvalidTransition, UnknownStudy
from triage.exams.chosen import apply_chosen, study_instances
from triage.exams.identity import is_conflict_row
from triage.vocabulary import ExamStatus

logger = logging.getLogger(__name__)

EVENT_RELEASED = "exam_released"


def hold(session: Session, study: Study, reason: str, now: datetime) -> None:
    """Move ``study`` to held with ``reason``; an exam already held gets the new reason."""
    if ExamStatus(study.status) is ExamStatus.HELD:
        study.hold_reason = reason
        return
    set_status(session, study, ExamStatus.HELD, reason, now=now)
    logger.warning("exam held", extra={"study_instance_uid": study.study_instance_uid})


@dataclass(frozen=True)
class Release:
    """What a release did."""

    study_instance_uid: str
    excluded_instances: int  # kept, never scored (patient identity conflicts)
    chosen_instances: int  # the chosen image set now


def release(session: Session, study_instance_uid: str, *, reason: str, by: str,
            now: datetime) -> Release:
    """held -> receiving for the newest exam with this Study Instance UID; see the module
    docstring. Does not commit."""
    if not reason.strip():
        raise InvalidTransition("a release needs a reason (what was corrected), kept in the "
                                "audit log")
    serialise_writers(session)
    study = session.scalars(
        select(Study).where(Study.study_instance_uid == study_instance_uid)
        .order_by(Study.id.desc()).limit(1).with_for_update()
    ).first()
    if study is None:
        raise UnknownStudy(f"no exam with Study Instance UID {study_instance_uid!r} is known; "
                           "`triage exams list --status held` shows the held exams")
    if ExamStatus(study.status) is not ExamStatus.HELD:
        raise InvalidTransition(f"exam {study_instance_uid} is {study.status}, not held: "
                                "there is nothing to release")
    ended = study.hold_reason
    set_status(session, study, ExamStatus.RECEIVING, f"released by {by}: {reason}", now=now)
    study.hold_reason = None
    study.skip_reason = None
    study.partial = False
    instances = study_instances(session, study.id)
    apply_chosen(session, study, instances, now)
    excluded = [i for i in instances if is_conflict_row(i)]
    session.add(AuditEvent(at=now, kind=EVENT_RELEASED, study_id=study.id, detail={
        "by": by, "reason": reason, "hold_reason": ended,
        "excluded_instance_ids": [i.id for i in excluded],
        "chosen_set_digest": study.chosen_set_digest}))
    logger.info("held exam released", extra={"study_instance_uid": study_instance_uid})
    return Release(study_instance_uid=study_instance_uid, excluded_instances=len(excluded),
                   chosen_instances=sum(i.chosen for i in instances))
