"""Shared controlled vocabularies (enums) used across layers.

Imports nothing from the project, so every layer may use it.
"""

from __future__ import annotations

from enum import StrEnum


class ExamStatus(StrEnum):
    RECEIVING = "receiving"
    READY = "ready"
    QUEUED = "queued"
    SCORING = "scoring"
    SCORED = "scored"
    DELIVERED = "delivered"
    FAILED = "failed"
    SKIPPED = "skipped"
    HELD = "held"  # needs an admin: e.g. conflicting patient identity within one exam


#: The only transitions DESIGN.md allows. A re-open (new scorable image that
#: changes the chosen set) is the only way back to RECEIVING.
ALLOWED_TRANSITIONS: dict[ExamStatus, frozenset[ExamStatus]] = {
    ExamStatus.RECEIVING: frozenset({ExamStatus.READY, ExamStatus.SKIPPED, ExamStatus.HELD}),
    ExamStatus.READY: frozenset({ExamStatus.QUEUED, ExamStatus.FAILED, ExamStatus.HELD}),
    ExamStatus.QUEUED: frozenset({ExamStatus.SCORING, ExamStatus.FAILED, ExamStatus.HELD}),
    # skipped: nothing in the exam that any member scores
    ExamStatus.SCORING: frozenset({ExamStatus.SCORED, ExamStatus.FAILED, ExamStatus.SKIPPED,
                                   ExamStatus.HELD}),
    ExamStatus.SCORED: frozenset({ExamStatus.DELIVERED, ExamStatus.RECEIVING, ExamStatus.HELD}),
    ExamStatus.DELIVERED: frozenset({ExamStatus.RECEIVING, ExamStatus.HELD}),
    ExamStatus.FAILED: frozenset({ExamStatus.RECEIVING, ExamStatus.HELD}),
    ExamStatus.SKIPPED: frozenset({ExamStatus.RECEIVING, ExamStatus.HELD}),
    # an admin resolved the hold: the exam is assembled again
    ExamStatus.HELD: frozenset({ExamStatus.RECEIVING}),
}


def transition_allowed(current: ExamStatus, new: ExamStatus) -> bool:
    return new in ALLOWED_TRANSITIONS[current]


class ImageClass(StrEnum):
    FFDM = "ffdm"
    SYNTHETIC2D = "synthetic2d"
    DBT = "dbt"
    PROJECTION = "projection"
    OTHER = "other"


class Laterality(StrEnum):
    LEFT = "L"
    RIGHT = "R"


class View(StrEnum):
    CC = "CC"
    MLO = "MLO"


class WeightsStatus(StrEnum):
    VERIFIED_PUBLISHED = "verified_published"
    IMPORTED_UNVERIFIED = "imported_unverified"
    SYNTHETIC_DEMO = "synthetic_demo"
    RANDOM = "random"


class OutputKind(StrEnum):
    SR_TID1500 = "sr_tid1500"
    SR_MAMMO_CAD = "sr_mammo_cad"
    SC_OVERLAY = "sc_overlay"


class OutboxStatus(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"  # permanent refusal, with reason


class RunStatus(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


NOT_TRIAGED = "NOT TRIAGED"
#: category of a verified run that lacks coverage, when TRIAGE_PARTIAL_POLICY=partial
PARTIAL = "PARTIAL"
