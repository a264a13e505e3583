"""GMIC-family members on 2D views: one forward per view, saliency, ROIs and attention."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from triage.errors import ScoringError
from triage.models import LoadedModel
from triage.pipeline.images import ExamImage
from triage.pipeline.runners import ExamInputs
from triage.pipeline.views2d import PreparedImage, PrepareRequest
from triage.results import RoiPatch, ViewScore


def forward_views(member: LoadedModel, x: torch.Tensor) -> Any:
    """The member's forward on N views (N, 1, H, W), in channels-last memory format.

    On the CPU the views run one at a time (measured in benchmarks/gmic.py: a 4-view batch
    is slower than four single views there); on an accelerator they run as one batch.
    The per-view outputs are concatenated into the model's own output type.
    """
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        if x.device.type != "cpu" or x.shape[0] == 1:
            return member.module(x)
        outs = [member.module(x[i:i + 1]) for i in range(x.shape[0])]
    return type(outs[0])(*[None if parts[0] is None else torch.cat(parts)
                           for parts in zip(*outs, strict=True)])


def _forward_probabilities(member: LoadedModel, arrays: list[np.ndarray], device: torch.device,
                           chunk: int = 4) -> np.ndarray:
    """(N, classes) probabilities of ``arrays`` in chunks of ``chunk`` views."""
    out = []
    for start in range(0, len(arrays), chunk):
        x = torch.from_numpy(np.stack(arrays[start:start + chunk])[:, None]).to(device)
        out.append(forward_views(member, x).y_fusion.float().cpu().numpy())
    return np.concatenate(out)


def _run_member(member: LoadedModel, batch: list[PreparedImage], device: torch.device,
                augmented: dict[str, list[np.ndarray]] | None = None) -> list[ViewScore]:
    """Run a GMIC-family member on a batch of prepared views (one forward).

    With test-time augmentation the view's probabilities are the mean over its augmented
    windows; saliency and ROIs come from the unaugmented window (what the overlay shows).
    """
    x = torch.from_numpy(np.stack([p.prepared.array for p in batch])[:, None]).to(device)
    out = forward_views(member, x)
    crop_h, crop_w = member.spec.hyperparameters.crop_shape
    probs = out.y_fusion.float().cpu().numpy()
    if augmented:
        uids = [p.image.sop_instance_uid for p in batch]
        flat = [a for uid in uids for a in augmented[uid]]
        aug = _forward_probabilities(member, flat, device).reshape(len(uids), -1, probs.shape[1])
        probs = aug.mean(axis=1)
    saliency = out.saliency_map.float().cpu().numpy()
    locations = out.patch_locations.cpu().numpy()
    attention = out.patch_attention.float().cpu().numpy()
    scores = []
    for i, p in enumerate(batch):
        rois = tuple(
            RoiPatch(top=int(r), left=int(c), height=crop_h, width=crop_w, attention=float(a))
            for (r, c), a in zip(locations[i], attention[i], strict=True)
        )
        scores.append(ViewScore(
            member=member.spec.name, sop_instance_uid=p.image.sop_instance_uid,
            sop_class_uid=p.image.sop_class_uid, laterality=p.image.laterality,
            view=p.image.view, p_benign=float(probs[i, 0]), p_malignant=float(probs[i, 1]),
            saliency_benign=saliency[i, 0].astype(np.float32),
            saliency_malignant=saliency[i, 1].astype(np.float32),
            frame=p.prepared.frame, rois=rois, image_class=p.image.image_class.value,
        ))
    return scores




class Gmic2DRunner:
    """GMIC (Shen et al. 2021) on each 2D view at the member's input size."""

    def requests(self, member: LoadedModel, images: Sequence[ExamImage]) -> list[PrepareRequest]:
        return [PrepareRequest(img, member.spec.input_size[img.view]) for img in images]

    def run(self, member: LoadedModel, inputs: ExamInputs) -> list[ViewScore]:
        wanted = self.requests(member, inputs.images)
        batch = [p for p in map(inputs.prepared.get, wanted) if p is not None]
        if not batch:
            raise ScoringError("no view of the exam could be decoded and preprocessed")
        augmented = {r.image.sop_instance_uid: inputs.augmented[r]
                     for r in wanted if r in inputs.augmented}
        return _run_member(member, batch, inputs.device, augmented or None)


GMIC_2D = Gmic2DRunner()
