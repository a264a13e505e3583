"""Who is asking, and what that caller may see.

Two roles. ``viewer`` reads the worklist, exams, score history and the model catalogue;
``admin`` also reads the query audit and sees the computed scores of runs whose weights are
not verified (README: such scores are shown to administrators only). Patient IDs are shown,
and may be searched, only for admins and only when ``TRIAGE_API_SHOW_PATIENT_IDS`` is set.
Patient names are never stored, so never shown.

The rules live here so the API and the CLI apply the same ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from triage.vocabulary import NOT_TRIAGED


class Role(StrEnum):
    VIEWER = "viewer"
    ADMIN = "admin"


#: keys that name a patient identifier in plain data (exam detail, audit filters)
PATIENT_ID_KEYS = frozenset({"patient_id", "issuer_of_patient_id", "other_patient_ids"})
#: keys whose values are scores (hidden from viewers for runs that are not verified)
SCORE_KEYS = frozenset({"exam_score", "score", "p_malignant", "p_benign"})


def _is_patient_name_key(key: str) -> bool:
    folded = key.lower().replace("_", "").replace("'", "")
    return "patientname" in folded or "patientsname" in folded


@dataclass(frozen=True)
class Access:
    """A caller: its name (token name or ``cli:<user>``), role and what it may see."""

    who: str
    role: Role
    patient_ids: bool  # may see and search patient IDs
    unverified_scores: bool  # may see scores of runs whose weights are not all verified
    channel: str = "api"  # api | cli: recorded in the query audit

    @classmethod
    def for_role(cls, who: str, role: Role, *, show_patient_ids: bool,
                 channel: str = "api") -> Access:
        admin = role is Role.ADMIN
        return cls(who=who, role=role, patient_ids=admin and show_patient_ids,
                   unverified_scores=admin, channel=channel)

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN


def redact(data: Any, access: Access) -> Any:
    """Plain data (dicts, lists) as ``access`` may see it.

    Patient names are always removed; patient IDs unless the caller may see them; for a
    caller who may not see unverified scores, the scores inside any mapping marked
    ``"verified": False`` are replaced by None.
    """
    return _redact(data, access, hide_scores=False)


def _redact(data: Any, access: Access, *, hide_scores: bool) -> Any:
    if isinstance(data, dict):
        hide = hide_scores or (not access.unverified_scores and data.get("verified") is False)
        out: dict[str, Any] = {}
        for key, value in data.items():
            if _is_patient_name_key(str(key)):
                continue
            if key in PATIENT_ID_KEYS and not access.patient_ids:
                continue
            if hide and key in SCORE_KEYS and isinstance(value, int | float | type(None)):
                out[key] = None
                continue
            out[key] = _redact(value, access, hide_scores=hide)
        return out
    if isinstance(data, list | tuple):
        return [_redact(v, access, hide_scores=hide_scores) for v in data]
    return data


def worklist_score_visible(category: str, access: Access) -> bool:
    """A worklist entry's score is shown to viewers unless the exam is NOT TRIAGED (its
    score, if any, comes from unverified weights or an exam that could not be triaged)."""
    return access.unverified_scores or category != NOT_TRIAGED
