"""Readiness, per image class (ffdm, synthetic2d, dbt), evaluated for exams in ``receiving``.

Everything here works from database state only (timestamps stored in UTC), so a restarted
listener continues where the previous one stopped.

* quiet: no instance arrived for ``TRIAGE_QUIET_SECONDS``; and no association that sent
  instances of the exam is still open (after ``TRIAGE_MAX_WAIT_SECONDS`` since the first
  instance, open associations no longer hold an exam back: some routers never close them);
* ready: some class has the four standard views (L-CC, R-CC, L-MLO, R-MLO) chosen;
  ``Study.image_classes`` lists the ready classes;
* ready and ``partial``: after max wait, some class has CC and MLO of at least one breast;
* skipped: quiet and no scorable instance (the reason summarises the instances' reasons),
  or after max wait no class has both views of any breast."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from sqlalchemy import exists, func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from triage.config import Settings
from triage.db.models import Association, Instance, StatusChange, Study
from triage.db.session import Database, serialise_writers
from triage.db.states import set_status
from triage.errors import InvalidTransition
from triage.exams.chosen import apply_chosen, study_instances
from triage.exams.reopen import apply_pending, pending_change_study_ids
from triage.vocabulary import ExamStatus, Laterality, View

logger = logging.getLogger(__name__)

STANDARD_SLOTS: tuple[tuple[Laterality, View], ...] = (
    (Laterality.LEFT, View.CC),
    (Laterality.RIGHT, View.CC),
    (Laterality.LEFT, View.MLO),
    (Laterality.RIGHT, View.MLO),
)


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
    instances = study_instances(session, study.id)
    scorable = [i for i in instances if i.scorable and not i.superseded and not i.loopback]
    if not scorable:
        set_status(session, study, ExamStatus.SKIPPED, _summarise_reasons(instances), now=now)
        return True
    apply_chosen(session, study, instances, now)  # flags are current; this re-checks them
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
        pending = pending_change_study_ids(session)
    changed: list[int] = []
    for study_id, action in [*((i, "decide") for i in receiving),
                             *((i, "pending") for i in pending)]:
        try:
            with db.session() as session:
                serialise_writers(session)
                study = session.get(Study, study_id, with_for_update=True)
                if study is None:
                    continue
                if action == "decide":
                    if ExamStatus(study.status) is not ExamStatus.RECEIVING:
                        continue
                    did = _decide(session, settings, study, now)
                else:
                    did = apply_pending(session, study, now)
                if did:
                    changed.append(study_id)
                    logger.info("exam status changed", extra={
                        "study_instance_uid": study.study_instance_uid, "status": study.status})
        except (OperationalError, InvalidTransition) as exc:
            # another process changed the exam at the same moment; the next pass decides
            logger.warning("readiness check of exam %s deferred: %s", study_id, exc)
    return changed
