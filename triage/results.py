"""Typed, plain (numpy) results of scoring an exam.

Produced by ``triage.pipeline``; consumed by ``triage.db`` writers, ``triage.outputs``
(SR and overlays) and the faces. Imports nothing from the project but the vocabulary,
so every layer may use it. No torch here: arrays are numpy.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from triage.vocabulary import Laterality, View, WeightsStatus


@dataclass(frozen=True)
class InputFrame:
    """Where a model input window lies in the source image (pixel coordinates).

    Model input pixel (r, c) -> padded, flipped crop (r + window_top, c + window_left)
    -> flipped crop (minus pad_top / pad_left) -> unflipped crop (mirror columns when
    ``flipped``) -> source (plus crop_top / crop_left).
    """

    source_shape: tuple[int, int]
    crop_top: int
    crop_left: int
    cropped_shape: tuple[int, int]
    flipped: bool
    pad_top: int
    pad_left: int
    window_top: int
    window_left: int
    input_shape: tuple[int, int]

    def to_source(self, row: float, col: float) -> tuple[float, float]:
        """Map a model-input coordinate to the source image (may fall outside it)."""
        r = row + self.window_top - self.pad_top
        c = col + self.window_left - self.pad_left
        if self.flipped:
            c = self.cropped_shape[1] - 1 - c
        return r + self.crop_top, c + self.crop_left

    def box_to_source(self, top: int, left: int, height: int, width: int) -> tuple[int, int, int, int]:
        """Map an input-frame box to (top, left, bottom, right) in source pixels, clipped."""
        r0, c0 = self.to_source(top, left)
        r1, c1 = self.to_source(top + height - 1, left + width - 1)
        rows, cols = self.source_shape
        top_s, bottom_s = sorted((r0, r1))
        left_s, right_s = sorted((c0, c1))
        return (
            int(max(0, min(rows - 1, top_s))),
            int(max(0, min(cols - 1, left_s))),
            int(max(0, min(rows - 1, bottom_s))),
            int(max(0, min(cols - 1, right_s))),
        )


@dataclass(frozen=True)
class RoiPatch:
    """A region that drove the score: a crop in model-input pixels with its attention."""

    top: int
    left: int
    height: int
    width: int
    attention: float
    frame: int | None = None  # 0-based slice for DBT


@dataclass(frozen=True)
class ViewScore:
    """One member's output for one image (view)."""

    member: str
    sop_instance_uid: str
    sop_class_uid: str
    laterality: Laterality
    view: View
    p_benign: float | None  # None: the member does not estimate benign findings
    p_malignant: float
    # float32 (h, w) maps on the model-input grid (any resolution spanning the input);
    # None for a member that produces no saliency (DMV-CNN image-only): the outputs then
    # list the member and its scores but draw and report no map or peak for it
    saliency_benign: np.ndarray | None
    saliency_malignant: np.ndarray | None
    frame: InputFrame
    rois: tuple[RoiPatch, ...] = ()
    saliency_slice: int | None = None  # DBT: slice shown / referenced (0-based)
    image_class: str = "ffdm"


@dataclass(frozen=True)
class MemberInfo:
    """A configured ensemble member and what happened to it in this run."""

    name: str
    version: str
    architecture: str
    modality: str
    ensemble_weight: float
    weights_sha256: str | None
    weights_status: WeightsStatus
    included: bool = True
    failure_reason: str | None = None


@dataclass(frozen=True)
class BreastScore:
    """Per-breast probabilities: the ensemble value and each member's."""

    laterality: Laterality
    p_benign: float | None  # None: no member estimates benign findings
    p_malignant: float
    per_member: dict[str, tuple[float | None, float]] = field(default_factory=dict)  # (benign, malignant)


def weighted_mean(pairs: Sequence[tuple[float, float | None]]) -> float | None:
    """sum(w * x) / sum(w) over the pairs (weight, value) whose value is not None; None when
    no value is present (nothing estimated it)."""
    present = [(w, x) for w, x in pairs if x is not None]
    total = sum(w for w, _ in present)
    if not present or total <= 0:
        return None
    return sum(w * x for w, x in present) / total


@dataclass(frozen=True)
class ScoredImage:
    """An image a run scored: which object, which content, where its bytes are."""

    sop_instance_uid: str
    content_digest: str  # sha256 of the stored dataset bytes (header and pixels)
    path: str
    image_class: str = "ffdm"


def scored_set_digest(images: Iterable[tuple[str, str]]) -> str:
    """Order-independent SHA-256 (hex) of (SOP Instance UID, content digest) pairs: the key
    of a scoring run and of its output UIDs. A corrected image sent again under the same
    SOP Instance UID has another content digest, so it makes another run."""
    lines = sorted({f"{uid}|{content}" for uid, content in images})
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


@dataclass(frozen=True)
class ExamResult:
    """Everything a scoring run produced for one exam."""

    study_instance_uid: str
    model_set_version: str
    instances_digest: str
    scored_sop_instance_uids: tuple[str, ...]
    members: tuple[MemberInfo, ...]
    views: tuple[ViewScore, ...]
    breasts: tuple[BreastScore, ...]
    exam_score: float
    category: str  # a configured priority name, or NOT TRIAGED
    not_triaged_reason: str | None
    tta_samples: int = 0
    tta_seed: int | None = None
    timings: dict[str, float] = field(default_factory=dict)
    device: str = "cpu"
    partial: bool = False
    notes: tuple[str, ...] = ()  # e.g. "synthetic 2D scored by FFDM models (domain shift)"
    #: the images this result describes, with their content digests (``instances_digest`` is
    #: ``scored_set_digest`` of them); outputs are built from exactly these files
    scored_images: tuple[ScoredImage, ...] = ()
    #: what the result does not cover (missing breast/view, failed view or member); a
    #: non-empty tuple makes the result partial and keeps it off the priority levels
    coverage_gaps: tuple[str, ...] = ()

    @property
    def verified(self) -> bool:
        """True only when every included member has verified published weights."""
        return all(
            m.weights_status is WeightsStatus.VERIFIED_PUBLISHED for m in self.members if m.included
        )
