"""The configured ensemble, loaded once per process (members checked, then loaded)."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from triage.config import Settings
from triage.errors import ModelError
from triage.models import LoadedModel, get_spec, load_member
from triage.pipeline.families import check_member
from triage.pipeline.images import ExamImage
from triage.results import scored_set_digest
from triage.vocabulary import WeightsStatus

log = logging.getLogger(__name__)


@dataclass
class Ensemble:
    """The configured members, loaded once per process (worker or CLI) and reused."""

    settings: Settings
    device: torch.device
    members: list[LoadedModel]
    weights: dict[str, float]
    modality: dict[str, str]
    model_set_version: str

    @property
    def verified(self) -> bool:
        return all(m.weights_status is WeightsStatus.VERIFIED_PUBLISHED for m in self.members)


def resolve_device(setting: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; otherwise the named device."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"TRIAGE_DEVICE={setting} but no CUDA device is available")
    return device


def model_set_version(members: Sequence[LoadedModel], weights: dict[str, float],
                      tta_samples: int, tta_seed: int) -> str:
    """A short stable id of what produced a score: members, versions, weight files, TTA."""
    payload = json.dumps(
        {
            "members": sorted(
                [m.spec.name, m.spec.version, m.sha256 or "", weights[m.spec.name]]
                + [[c.spec.name, c.spec.version, c.sha256 or ""] for c in m.companions]
                for m in members
            ),
            "tta": [tta_samples, tta_seed if tta_samples else None],
        },
        sort_keys=True,
    )
    return "ms-" + hashlib.sha256(payload.encode()).hexdigest()[:16]


#: least trusted first: a member is only as trusted as the least trusted weights it runs
_TRUST = (WeightsStatus.RANDOM, WeightsStatus.SYNTHETIC_DEMO, WeightsStatus.IMPORTED_UNVERIFIED,
          WeightsStatus.VERIFIED_PUBLISHED)


def member_weights_status(member: LoadedModel) -> WeightsStatus:
    """The status recorded for a member: the least trusted of its own weights and its
    companions' (a DMV-CNN image-and-heatmaps member with verified weights but a demo patch
    classifier is reported, stored and categorised as synthetic demo)."""
    return min((member.weights_status, *(c.weights_status for c in member.companions)),
               key=_TRUST.index)


def companion_text(member: LoadedModel) -> str:
    """What a member's companions are, with versions, weights sha256 and status ('' if none)."""
    return "; ".join(
        f"uses {c.spec.name} {c.spec.version} (not an ensemble member, not weighted; weights "
        f"sha256 {c.sha256 or 'none'}, {c.weights_status.value})"
        for c in member.companions)


def member_architecture(member: LoadedModel) -> str:
    """The member's architecture text, followed by its companions (see companion_text)."""
    extra = companion_text(member)
    return f"{member.spec.architecture}; {extra}" if extra else member.spec.architecture


def load_ensemble(settings: Settings, device: torch.device | None = None) -> Ensemble:
    """Load every configured member; any problem is a clear error before an exam is touched."""
    # family and modality first: a member the pipeline cannot run stops start-up before
    # any weights are read
    modality = {m.name: check_member(get_spec(m.name), m.modality) for m in settings.ensemble}
    device = device or resolve_device(settings.device)
    members = [load_member(m.name, settings, device) for m in settings.ensemble]
    for member in members:  # NHWC convolutions: faster on CPU and on recent GPUs
        member.module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    weights = {m.name: m.weight for m in settings.ensemble}
    version = model_set_version(members, weights, settings.tta_samples, settings.tta_seed)
    log.info("ensemble loaded", extra={"model_set_version": version, "device": str(device),
                                        "members": [m.spec.name for m in members]})
    return Ensemble(settings=settings, device=device, members=members, weights=weights,
                    modality=modality,
                    model_set_version=version)


def instances_digest(images: Sequence[ExamImage]) -> str:
    """The run key of a set of images: their SOP Instance UIDs and content digests."""
    return scored_set_digest((i.sop_instance_uid, i.content_digest) for i in images)




