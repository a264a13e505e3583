"""Grouping: which exam an instance belongs to.

By Study Instance UID (default), or with ``TRIAGE_GROUP_BY=accession`` by accession
number + issuer: an instance joins the exam of the same Study Instance UID with that accession,
else the newest exam with that accession first received within ``TRIAGE_GROUP_WINDOW_HOURS``,
else it starts a new exam. Instances without an accession number group by Study Instance UID."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from triage.config import GroupBy, Settings
from triage.db.models import StatusChange, Study
from triage.errors import DatabaseError
from triage.exams.headers import StudyHeader
from triage.exams.identity import PatientIdentity, adopted_identity
from triage.vocabulary import ExamStatus

logger = logging.getLogger(__name__)


# ---- grouping ---------------------------------------------------------------------------------
def uid_key(study_uid: str) -> str:
    return f"uid:{study_uid}"


def accession_prefix(header: StudyHeader) -> str:
    return f"acc:{header.issuer_of_accession or ''}|{header.accession_number}|"


def find_study(session: Session, settings: Settings, header: StudyHeader,
                now: datetime) -> tuple[Study | None, str]:
    """The exam this instance belongs to (locked for update), or None and the key to create."""
    if settings.group_by is GroupBy.ACCESSION and header.accession_number:
        prefix = accession_prefix(header)
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
    key = uid_key(header.study_instance_uid)
    study = session.scalars(select(Study).where(Study.grouping_key == key)
                            .with_for_update()).first()
    return study, key


def get_or_create_study(session: Session, settings: Settings, header: StudyHeader,
                         now: datetime) -> Study:
    study, key = find_study(session, settings, header, now)
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
        study, _ = find_study(session, settings, header, now)
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


def update_study_header(study: Study, header: StudyHeader) -> None:
    """Fill the exam's attributes from an accepted image (never from one whose patient
    identity conflicts with the exam: ``identity``)."""
    if header.accession_number and header.accession_number not in study.accession_numbers:
        study.accession_numbers = [*study.accession_numbers, header.accession_number]
    exam = PatientIdentity(study.patient_id, study.issuer_of_patient_id)
    patient = adopted_identity(exam, PatientIdentity.of_header(header))
    if patient != exam:
        study.patient_id, study.issuer_of_patient_id = patient.patient_id, patient.issuer
    for field in ("issuer_of_accession", "study_date", "study_time", "timezone_offset",
                  "study_description"):
        if getattr(study, field) is None and getattr(header, field):
            setattr(study, field, getattr(header, field))
    new_codes = [c for c in header.procedure_codes if c not in study.procedure_codes]
    if new_codes:
        study.procedure_codes = [*study.procedure_codes, *new_codes]
