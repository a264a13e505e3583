"""All-convolutional whole-image members (Shen et al. 2019) on 2D views.

Each view is prepared by the ``allconv`` recipe (:mod:`triage.imaging.whole_image`: the
uncropped image scaled to 0-255 and resized to the member's input size, shared by every
all-conv member), the member's training-set mean grey value is subtracted, and the
paper's augmented prediction is always applied: the image and its horizontal, vertical
and horizontal+vertical flips are scored and the four malignant probabilities averaged
(:func:`flip_averaged`). The per-breast mean of CC and MLO is ``triage.scoring``'s.

Per view the member reports:

* ``p_malignant``: the flip-averaged malignant probability;
* ``p_benign = None`` ("not estimated"): the model has no benign output (its classes are
  malignant and non-malignant = benign or normal). ``triage.scoring`` leaves such a member
  out of the benign means only (renormalising over the members that estimate it), so it
  neither pulls an ensemble's benign probability down nor pretends to a value; the SRs and
  the overlay say "not estimated" where no member estimates it;
* ``saliency_malignant``: the class activation map (``AllConvOutput.saliency``) of the four
  flipped inputs, each flipped back onto the original orientation, averaged; it spans the
  whole source image through the view's frame. No benign map, no ROI boxes (the model
  has no regions).

``TRIAGE_TTA_SAMPLES`` (random windows, the NYU models' augmentation) does not apply to
these members: the paper's augmentation is the flips, and the runner says so in the
result's notes when random windows were configured.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from triage.errors import ScoringError
from triage.models import LoadedModel
from triage.pipeline.images import ExamImage
from triage.pipeline.runners import ExamInputs
from triage.pipeline.views2d import PreparedImage, PrepareRequest
from triage.results import ViewScore

#: Recipe name of the whole-image preprocessing (``views2d.RECIPES``).
ALLCONV_RECIPE = "allconv"

#: No benign output (module docstring).
P_BENIGN_NOT_ESTIMATED: float | None = None
TTA_NOTE = ("all-convolutional members use the paper's flip averaging (4 flips), not the "
            "TRIAGE_TTA_SAMPLES random windows")


class FlipAveraged(NamedTuple):
    """Flip-averaged outputs of N inputs: ``p_malignant`` (N,), ``saliency`` (N, h, w)."""

    p_malignant: Tensor
    saliency: Tensor


def flip_variants(x: Tensor) -> Tensor:
    """(4N, ...) the inputs, then their horizontal, vertical and both-axes flips."""
    return torch.cat([x, x.flip(-1), x.flip(-2), x.flip((-2, -1))])


def flip_averaged(module: nn.Module, x: Tensor) -> FlipAveraged:
    """The paper's augmented prediction for N inputs (N, 1, H, W) in one forward of 4N.

    The four probabilities are averaged; each saliency map is flipped back (the same flips
    on the map) before averaging. Scoring a flipped input gives the same mean probability
    and the flipped map (the same four images), up to float rounding. A flipped-back map
    lines up with the unflipped one to within a cell: the network is not exactly
    flip-equivariant (e.g. the unpadded stride-2 max pooling of the ResNet-50 stem drops
    the last row and column of an even-sized map).
    """
    n = int(x.shape[0])
    out = module(flip_variants(x))
    probs = out.p_malignant.float().reshape(4, n)
    maps = out.saliency.float().reshape(4, n, *out.saliency.shape[1:])
    unflipped = torch.stack([maps[0], maps[1].flip(-1), maps[2].flip(-2),
                             maps[3].flip((-2, -1))])
    return FlipAveraged(p_malignant=probs.mean(dim=0), saliency=unflipped.mean(dim=0))


def _views_per_forward(device: torch.device) -> int:
    """Views per forward (each is 4 flipped inputs): one on the CPU, four elsewhere."""
    return 1 if device.type == "cpu" else 4


def _run(member: LoadedModel, batch: Sequence[PreparedImage],
         device: torch.device) -> list[ViewScore]:
    mean = float(member.spec.hyperparameters.pixel_mean)
    chunk = _views_per_forward(device)
    p_parts, s_parts = [], []
    with torch.inference_mode():
        for start in range(0, len(batch), chunk):
            arrays = np.stack([p.prepared.array for p in batch[start:start + chunk]])[:, None]
            x = torch.from_numpy(arrays - np.float32(mean)).to(device)
            out = flip_averaged(member.module, x.contiguous(memory_format=torch.channels_last))
            p_parts.append(out.p_malignant.cpu().numpy())
            s_parts.append(out.saliency.cpu().numpy())
    p_malignant = np.concatenate(p_parts)
    saliency = np.concatenate(s_parts).astype(np.float32)
    return [
        ViewScore(
            member=member.spec.name, sop_instance_uid=p.image.sop_instance_uid,
            sop_class_uid=p.image.sop_class_uid, laterality=p.image.laterality,
            view=p.image.view, p_benign=P_BENIGN_NOT_ESTIMATED,
            p_malignant=float(p_malignant[i]), saliency_benign=None,
            saliency_malignant=np.ascontiguousarray(saliency[i]), frame=p.prepared.frame,
            rois=(), image_class=p.image.image_class.value,
        )
        for i, p in enumerate(batch)
    ]


class AllConvRunner:
    """Whole-image all-convolutional members: one flip-averaged score per 2D view."""

    def requests(self, member: LoadedModel, images: Sequence[ExamImage]) -> list[PrepareRequest]:
        return [PrepareRequest(img, member.spec.input_size[img.view], ALLCONV_RECIPE)
                for img in images]

    def run(self, member: LoadedModel, inputs: ExamInputs) -> list[ViewScore]:
        wanted = self.requests(member, inputs.images)
        batch = [p for p in map(inputs.prepared.get, wanted) if p is not None]
        if not batch:
            raise ScoringError("no view of the exam could be decoded and preprocessed")
        if any(r in inputs.augmented for r in wanted) and TTA_NOTE not in inputs.notes:
            inputs.notes.append(TTA_NOTE)
        return _run(member, batch, inputs.device)


ALLCONV = AllConvRunner()
