"""Patient identity: an exam holds one patient's images, never two patients' merged silently.

What is compared
    An instance's identity is its Patient ID (0010,0020) and Issuer of Patient ID (0010,0021),
    as stored on its row (stripped, clipped to 64 characters; empty counts as absent). Patient
    names are never read or compared. Values are compared exactly (no case folding: "p1" and
    "P1" are two IDs to the issuing system).

What is a conflict
    Two identities conflict when both Patient IDs are present and differ, or when the IDs are
    equal and both issuers are present and differ. A value missing on one side is *not* a
    conflict: many modalities leave Issuer of Patient ID empty and some send no Patient ID at
    all, and an absent value gives no evidence of another patient; such an image joins the
    exam as before (and does not change the exam's patient).

Against what
    1. The exam's patient (``Study.patient_id`` / ``issuer_of_patient_id``): taken from the
       first accepted image that carries a Patient ID, with that image's issuer (or the first
       issuer that comes with the same ID later). A conflicting image never changes it.
    2. Every accepted stored version of the same SOP Instance UID, wherever it was filed: a
       SOP Instance UID that arrives again under another patient never supersedes the first
       patient's image. (Checked first: its reason is the more specific one.)
    Loopback objects (our own outputs coming back) are not checked: they are never scored.

What happens to a conflicting image (see ``recording``)
    * It is kept: its bytes stay in the spool and it gets a row with its own Patient ID and
      issuer, so an admin can see what arrived. The sender is answered *success*: the object
      is safely stored, a failure status would only make a router retry the same object
      forever, and the correction belongs to the sending side, not to a retry.
    * It is never scorable, never chosen, and never supersedes a stored version; its reason
      starts with :data:`CONFLICT_PREFIX` and names both identities (the IDs are admin data
      in the database; log lines carry UIDs only).
    * An audit event ``patient_identity_conflict`` records both identities.
    * The exam goes to ``held`` (from any status) with a reason an admin can act on; a held
      exam is not assessed for readiness and not dispatched. Results already stored or sent
      for an exam held later were computed on its own patient's images only.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from triage.exams.headers import StudyHeader

#: every conflicting image's reason starts with this (how a conflicting row is recognised)
CONFLICT_PREFIX = "patient identity conflict:"
EVENT_IDENTITY_CONFLICT = "patient_identity_conflict"


class HasIdentity(Protocol):
    """A row with a patient identity and a reason (an ``Instance``)."""

    patient_id: str | None
    issuer_of_patient_id: str | None
    reason: str | None


@dataclass(frozen=True)
class PatientIdentity:
    patient_id: str | None
    issuer: str | None

    @classmethod
    def of_header(cls, header: StudyHeader) -> PatientIdentity:
        return cls(header.patient_id or None, header.issuer_of_patient_id or None)

    @classmethod
    def of_row(cls, row: HasIdentity) -> PatientIdentity:
        return cls(row.patient_id or None, row.issuer_of_patient_id or None)

    def describe(self) -> str:
        """For reasons stored in the database (never for log lines)."""
        text = f"Patient ID {self.patient_id!r}" if self.patient_id else "no Patient ID"
        return text + (f" (issuer {self.issuer!r})" if self.issuer else " (no issuer)")

    def as_dict(self) -> dict[str, str | None]:
        return {"patient_id": self.patient_id, "issuer_of_patient_id": self.issuer}


def conflicting(a: PatientIdentity, b: PatientIdentity) -> bool:
    """Do ``a`` and ``b`` name different patients? A missing value is never a conflict."""
    if not a.patient_id or not b.patient_id:
        return False
    if a.patient_id != b.patient_id:
        return True
    return bool(a.issuer and b.issuer and a.issuer != b.issuer)


class ConflictKind(StrEnum):
    EXAM = "exam_patient"  # the image's patient is not the exam's
    SOP_INSTANCE_UID = "sop_instance_uid_reused"  # a stored version belongs to another patient


@dataclass(frozen=True)
class IdentityConflict:
    kind: ConflictKind
    existing: PatientIdentity  # the exam's patient, or the stored version's
    incoming: PatientIdentity  # the new image's

    @property
    def reason(self) -> str:
        """The conflicting image's reason (names both identities; database only)."""
        if self.kind is ConflictKind.SOP_INSTANCE_UID:
            return (f"{CONFLICT_PREFIX} SOP Instance UID already stored for "
                    f"{self.existing.describe()} vs this image's {self.incoming.describe()}; "
                    "the stored image stays current, this one is kept but never scored")
        return (f"{CONFLICT_PREFIX} exam patient {self.existing.describe()} vs this image's "
                f"{self.incoming.describe()}; kept but never scored")


def is_conflict_row(row: HasIdentity) -> bool:
    """Was this row stored as a patient identity conflict?"""
    return bool(row.reason and row.reason.startswith(CONFLICT_PREFIX))


def find_conflict(exam: PatientIdentity, incoming: PatientIdentity,
                  stored_versions: Iterable[HasIdentity]) -> IdentityConflict | None:
    """The conflict of an incoming image with its stored versions (rows of the same SOP
    Instance UID; conflicting rows among them are ignored) or else with its exam's patient;
    None when there is none."""
    for row in stored_versions:
        existing = PatientIdentity.of_row(row)
        if not is_conflict_row(row) and conflicting(existing, incoming):
            return IdentityConflict(ConflictKind.SOP_INSTANCE_UID, existing, incoming)
    if conflicting(exam, incoming):
        return IdentityConflict(ConflictKind.EXAM, exam, incoming)
    return None


def adopted_identity(exam: PatientIdentity, incoming: PatientIdentity) -> PatientIdentity:
    """The exam's patient after accepting a non-conflicting image: the first Patient ID
    seen, with its issuer (an issuer is taken only together with the same ID)."""
    if not exam.patient_id:
        return incoming if incoming.patient_id else exam
    if not exam.issuer and incoming.patient_id == exam.patient_id and incoming.issuer:
        return PatientIdentity(exam.patient_id, incoming.issuer)
    return exam


def hold_reason(study_instance_uid: str, conflict: IdentityConflict, sop_instance_uid: str,
                conflicting_images: int) -> str:
    """The held exam's reason: what conflicts and what the admin can do about it."""
    if conflict.kind is ConflictKind.SOP_INSTANCE_UID:
        what = (f"SOP Instance UID {sop_instance_uid} arrived again with "
                f"{conflict.incoming.describe()}, stored before for {conflict.existing.describe()}")
    else:
        what = (f"exam patient {conflict.existing.describe()} vs {conflict.incoming.describe()} "
                f"(SOP Instance UID {sop_instance_uid})")
    return (f"{CONFLICT_PREFIX} {what}; {conflicting_images} image(s) of this exam are kept "
            "but excluded from scoring. Correct the patient data at the sender or archive "
            "(re-send the other patient's images under their own study), then run "
            f"`triage exams release {study_instance_uid} --reason TEXT`; the excluded images "
            "stay excluded")
