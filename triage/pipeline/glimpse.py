"""GlimpseNet members (Hang et al.) on 2D views: one forward per view, region map, glimpses.

Each view is prepared by the shared 2D recipe (``PrepareRequest`` default, the reference
crop/flip/window/standardise) at the member's input size, so a GlimpseNet member and a
GMIC member of the same size share one prepared view. Per view the result carries:

* ``p_benign`` / ``p_malignant``: the pooled P(BENIGN) and P(MALIGNANT) (see
  :mod:`triage.models.glimpsenet` for the class mapping); with test-time augmentation the
  mean over the view's augmented windows, like the GMIC runner;
* saliency: the FCGN region confidence (``clamp(map / lambda, 0, 1)``, on the 512x512 grid
  spanning the model input) as both ``saliency_malignant`` and ``saliency_benign``: the
  map marks lesions of any class (it is trained on the lesion masks of every class), so it
  is the localisation behind both outputs; the SR reports its peak for each;
* ``rois``: the glimpses, best first, as ``RoiPatch`` boxes in model-input pixels with
  their window score (mean region confidence, in [0, 1]) as ``attention``; the view's
  ``InputFrame`` places them, and the map, on the source image.

Saliency and glimpses always come from the unaugmented window (what the overlay shows).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from triage.errors import ScoringError
from triage.models import LoadedModel
from triage.models.glimpsenet import GlimpseNetOutput
from triage.pipeline.gmic2d import forward_views
from triage.pipeline.images import ExamImage
from triage.pipeline.runners import ExamInputs, MemberRunner
from triage.pipeline.views2d import PreparedImage, PrepareRequest
from triage.results import RoiPatch, ViewScore


def _forward(member: LoadedModel, arrays: Sequence[np.ndarray],
             device: torch.device) -> GlimpseNetOutput:
    x = torch.from_numpy(np.stack(list(arrays))[:, None]).to(device)
    out = forward_views(member, x)
    if not isinstance(out, GlimpseNetOutput):
        raise ScoringError(f"member {member.spec.name} is not a GlimpseNet "
                           f"(its forward returned {type(out).__name__})")
    return out


def _augmented_probabilities(member: LoadedModel, windows: list[list[np.ndarray]],
                             device: torch.device, chunk: int = 4) -> np.ndarray:
    """(views, 2) mean (benign, malignant) over each view's augmented windows."""
    flat = [w for view in windows for w in view]
    parts = [_forward(member, flat[i:i + chunk], device).probabilities.float().cpu().numpy()
             for i in range(0, len(flat), chunk)]
    probs = np.concatenate(parts)
    per_view = len(windows[0])
    return probs.reshape(len(windows), per_view, probs.shape[1]).mean(axis=1)


def score_views(member: LoadedModel, batch: Sequence[PreparedImage], device: torch.device,
                augmented: Sequence[list[np.ndarray]] | None = None) -> list[ViewScore]:
    """One ``ViewScore`` per prepared view (``augmented``: its TTA windows, same order)."""
    out = _forward(member, [p.prepared.array for p in batch], device)
    probs = out.probabilities.float().cpu().numpy()
    if augmented:
        probs = _augmented_probabilities(member, list(augmented), device)
    saliency = out.saliency.float().cpu().numpy()
    boxes = out.glimpse_boxes.cpu().numpy()
    scores = out.glimpse_scores.float().cpu().numpy()
    results = []
    for i, p in enumerate(batch):
        rois = tuple(
            RoiPatch(top=int(top), left=int(left), height=int(bottom - top),
                     width=int(right - left), attention=float(score))
            for (top, left, bottom, right), score in zip(boxes[i], scores[i], strict=True)
        )
        view_map = np.ascontiguousarray(saliency[i], dtype=np.float32)
        results.append(ViewScore(
            member=member.spec.name, sop_instance_uid=p.image.sop_instance_uid,
            sop_class_uid=p.image.sop_class_uid, laterality=p.image.laterality,
            view=p.image.view, p_benign=float(probs[i, 0]), p_malignant=float(probs[i, 1]),
            saliency_benign=view_map, saliency_malignant=view_map.copy(),
            frame=p.prepared.frame, rois=rois, image_class=p.image.image_class.value,
        ))
    return results


class GlimpseRunner:
    """GlimpseNet on each 2D view at the member's input size."""

    def requests(self, member: LoadedModel, images: Sequence[ExamImage]) -> list[PrepareRequest]:
        return [PrepareRequest(img, member.spec.input_size[img.view]) for img in images]

    def run(self, member: LoadedModel, inputs: ExamInputs) -> list[ViewScore]:
        wanted = [r for r in self.requests(member, inputs.images)
                  if inputs.prepared.get(r) is not None]
        if not wanted:
            raise ScoringError("no view of the exam could be decoded and preprocessed")
        batch = [p for p in map(inputs.prepared.get, wanted) if p is not None]
        augmented = ([inputs.augmented[r] for r in wanted]
                     if all(r in inputs.augmented for r in wanted) and inputs.augmented
                     else None)
        return score_views(member, batch, inputs.device, augmented)


GLIMPSE = GlimpseRunner()

#: model families this runner scores: ``families.RUNNERS`` takes them in one line
GLIMPSE_RUNNERS: dict[str, MemberRunner] = {"glimpsenet": GLIMPSE, "glimpsenet-testing": GLIMPSE}
