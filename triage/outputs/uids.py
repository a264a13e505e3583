"""UID policy for every object the product writes.

A UID is ``settings.uid_root`` followed by the leading decimal digits of a SHA-256 over a
key. The key is (study, model-set version, digest of the scored SOP Instance UIDs, output
kind, view), so:

* a retry of the same scoring run reproduces the same UIDs (the archive sees the same
  instance again instead of a duplicate);
* a re-score after new images (a different set of scored instances) or with another
  model set gets new UIDs, and its SR names the one it replaces (Predecessor Documents
  Sequence, see ``triage.outputs.common.DocumentReference``);
* series UIDs follow the same key without the view: one new series per output kind and
  scoring run, in the source study.

The decimal digits of a hash never start with ``0`` (the leading digit of a positive
integer), so every component is valid; the total length is at most 64 characters.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from triage.errors import ConfigError
from triage.results import ExamResult
from triage.vocabulary import OutputKind

#: Bumped only if the key layout changes (that would change every UID we ever made).
_KEY_VERSION = "triage-uid-v1"
_MAX_UID = 64
#: SHA-256 gives 77 decimal digits; 38 of them (~126 bits) are plenty.
_MAX_DIGITS = 38
_MIN_DIGITS = 20
_UID_PATTERN = re.compile(r"(0|[1-9]\d*)(\.(0|[1-9]\d*))*")


def is_valid_uid(uid: str) -> bool:
    """True for a syntactically valid DICOM UID (PS3.5 9.1): digits and dots, <= 64."""
    return len(uid) <= _MAX_UID and _UID_PATTERN.fullmatch(uid) is not None


def digest_instances(sop_instance_uids: Iterable[str]) -> str:
    """Order-independent SHA-256 (hex) of a set of SOP Instance UIDs."""
    joined = "\n".join(sorted(set(sop_instance_uids)))
    return hashlib.sha256(joined.encode("ascii")).hexdigest()


def uid_from_key(root: str, *parts: str) -> str:
    """``root`` + decimal digits of SHA-256 over ``parts``; deterministic, <= 64 chars."""
    if not root.endswith(".") or not is_valid_uid(root[:-1]):
        raise ConfigError(
            f"TRIAGE_UID_ROOT {root!r} must be a dotted numeric UID prefix ending with '.'"
        )
    digits = min(_MAX_DIGITS, _MAX_UID - len(root))
    if digits < _MIN_DIGITS:
        raise ConfigError(
            f"TRIAGE_UID_ROOT {root!r} is too long: at most {_MAX_UID - _MIN_DIGITS} "
            "characters leave room for unique UIDs"
        )
    key = "\x1f".join((_KEY_VERSION, *parts)).encode("utf-8")
    number = int.from_bytes(hashlib.sha256(key).digest(), "big") or 1
    return root + str(number)[:digits]


def _run_key(result: ExamResult) -> tuple[str, str, str, str]:
    return (
        result.study_instance_uid,
        result.model_set_version,
        result.instances_digest,
        digest_instances(result.scored_sop_instance_uids),
    )


def series_uid(root: str, result: ExamResult, kind: OutputKind) -> str:
    """Series Instance UID of the output series of ``kind`` for this scoring run."""
    return uid_from_key(root, "series", *_run_key(result), kind.value)


def instance_uid(root: str, result: ExamResult, kind: OutputKind, view: str = "") -> str:
    """SOP Instance UID of one output; ``view`` names the source image (its SOP Instance
    UID) for per-view outputs, empty for per-exam outputs (SRs)."""
    return uid_from_key(root, "instance", *_run_key(result), kind.value, view)


def observer_uid(root: str, model_set_version: str) -> str:
    """Device Observer UID of the algorithm (same for every run of one model set)."""
    return uid_from_key(root, "device", model_set_version)


def is_own_uid(uid: str, root: str) -> bool:
    """True when ``uid`` was made under our root (loopback detection)."""
    return uid.startswith(root)


@dataclass(frozen=True)
class OutputUids:
    """Every UID one scoring run's outputs will carry (for outbox rows and retries)."""

    sr_series: str
    sr_instance: str
    cad_series: str
    cad_instance: str
    overlay_series: str
    overlay_instances: dict[str, str]  # source SOP Instance UID -> overlay SOP Instance UID


def plan_uids(root: str, result: ExamResult) -> OutputUids:
    """All output UIDs for ``result``: one per SR kind, one overlay per scored view."""
    sources = sorted({v.sop_instance_uid for v in result.views})
    return OutputUids(
        sr_series=series_uid(root, result, OutputKind.SR_TID1500),
        sr_instance=instance_uid(root, result, OutputKind.SR_TID1500),
        cad_series=series_uid(root, result, OutputKind.SR_MAMMO_CAD),
        cad_instance=instance_uid(root, result, OutputKind.SR_MAMMO_CAD),
        overlay_series=series_uid(root, result, OutputKind.SC_OVERLAY),
        overlay_instances={
            uid: instance_uid(root, result, OutputKind.SC_OVERLAY, uid) for uid in sources
        },
    )
