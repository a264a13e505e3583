"""DMV-CNN members (Wu et al. 2019, breast_cancer_classifier): one exam-level forward.

The registered members (``preprocessing="breast_cancer_classifier"``):

* ``dmv-cnn-image-only``: the view-wise model on the four standardised views;
* ``dmv-cnn-image-and-heatmaps``: the same with two extra input channels per view, the
  heatmaps of its patch classifier (``dmv-patch-densenet121``, loaded with the member as
  ``LoadedModel.companions``).

Preprocessing (fixtures README, preprocessing.json ``breast_cancer_classifier``): the same
crop / right-facing flip / optimal centre / padding / window / standardisation as GMIC
(``triage.imaging.prepare_view``; the two references' code is functionally identical),
with the DMV windows CC 2677x1942 and MLO 2974x1748 (recipe ``breast_cancer_classifier``).
The testing-only ``dmv-cnn-testing-small`` prepares at those windows and resizes to 0.25
scale (recipe ``breast_cancer_classifier-testing``, see ``imaging.prepare_view_resized``).

Heatmaps (section IV-B; fixtures README "Heatmap patch grid"): per view, the flipped
crop standardised as a whole (``imaging.standardize_whole``), the reference patch grid
(256-pixel patches, stride 70) with the uneven strides drawn from one ``random.Random(0)``
per exam in the order L-CC, R-CC, L-MLO, R-MLO (the reference seeds once per run with 0;
we seed per exam so an exam's heatmaps do not depend on what was scored before it), the
patch classifier in batches (``models.heatmaps.generate_heatmaps``), softmax column 0 the
malignant and column 1 the benign map. Both maps are windowed exactly like the image
(``imaging.window_plane``: same padding, window and resize, not standardised) and stacked
after the image as input channels ``[image, benign heatmap, malignant heatmap]``
(:data:`HEATMAP_CHANNELS`: the brief's and the published code's order; the paper writes
the inputs as ``[x; x^m; x^b]``, so this is the one choice that only the published
``sample_imageheatmaps_model.p`` sample predictions can confirm).

Outputs: the view-wise model has a CC and an MLO head, each predicting both breasts. The
CC head's left / right prediction is reported as the L-CC / R-CC view score, the MLO
head's as the L-MLO / R-MLO score. The pipeline's breast rule (``scoring``: mean of the
breast's CC and MLO view scores) then gives exactly the paper's breast prediction, the
mean of the CC and MLO branches (section IV-A). The image-wise model (not registered as a
member, supported for completeness) reports its per-view outputs directly.

Saliency: the image-and-heatmaps member's view saliency is its windowed heatmaps,
downsampled :data:`SALIENCY_DOWNSAMPLE` times (INTER_AREA; the maps are smooth at the
70-pixel patch stride), so the overlays draw them and the SR reports their peaks. The
image-only member has no saliency (``None``) and no ROIs.

Test-time augmentation (``TRIAGE_TTA_SAMPLES``): the image-only member averages its
probabilities over the shared seeded windows, sample k of every view in forward k. The
image-and-heatmaps member refuses it (the shared windows carry no heatmap channels), so it
is left out with that reason rather than reported as augmented.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence

import cv2
import numpy as np
import torch

from triage.errors import ModelError, ScoringError
from triage.imaging import exam_patch_grids, standardize_whole, window_plane
from triage.models import LoadedModel
from triage.models.dmv_cnn import ImageWiseOutput, SplitBreastOutput
from triage.models.heatmaps import generate_heatmaps
from triage.models.registry import HEATMAPS_FROM
from triage.pipeline.images import ExamImage
from triage.pipeline.runners import ExamInputs
from triage.pipeline.views2d import PreparedImage, PrepareRequest
from triage.results import ViewScore
from triage.vocabulary import Laterality, View

log = logging.getLogger(__name__)

#: The four views the model sees, in its argument order (and the reference's grid order).
EXAM_VIEWS: tuple[tuple[Laterality, View], ...] = (
    (Laterality.LEFT, View.CC), (Laterality.RIGHT, View.CC),
    (Laterality.LEFT, View.MLO), (Laterality.RIGHT, View.MLO),
)
#: Heatmap input channels after the image channel (channel 0).
HEATMAP_CHANNELS: tuple[str, ...] = ("benign", "malignant")
#: Seed of the patch-grid strides (the reference's default ``random.seed(0)``).
PATCH_GRID_SEED = 0
#: Saliency maps are the windowed heatmaps at 1/8 of the full model window.
SALIENCY_DOWNSAMPLE = 8

#: family (``ModelSpec.preprocessing``) -> the 2D recipe its inputs are prepared with
DMV_RECIPES: Mapping[str, str] = {
    "breast_cancer_classifier": "breast_cancer_classifier",
    "breast_cancer_classifier-testing": "breast_cancer_classifier-testing",
}

Key = tuple[Laterality, View]


def _label(key: Key) -> str:
    return f"{key[0].value}-{key[1].value}"


def _by_view(member: LoadedModel, inputs: ExamInputs,
             requests: Sequence[PrepareRequest]) -> dict[Key, PreparedImage]:
    """The member's prepared image per standard view; every view must be there once."""
    found: dict[Key, PreparedImage] = {}
    reasons: list[str] = []
    for request in requests:
        key = (request.image.laterality, request.image.view)
        if key in found:
            raise ScoringError(
                f"{member.spec.name} scores one image per view, but the exam has two "
                f"{_label(key)} images ({found[key].image.sop_instance_uid}, "
                f"{request.image.sop_instance_uid}); the exam's image choice must pick one"
            )
        prepared = inputs.prepared.get(request)
        if prepared is None:
            uid = request.image.sop_instance_uid
            why = inputs.prepared.failures.get(uid, "not preprocessed")
            reasons.append(f"{_label(key)} ({uid}) could not be used: {why}")
            continue
        found[key] = prepared
    missing = [_label(k) for k in EXAM_VIEWS if k not in found
               and not any((r.image.laterality, r.image.view) == k for r in requests)]
    if missing or reasons:
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + reasons
        raise ScoringError(
            f"{member.spec.name} is a four-view model and needs L-CC, R-CC, L-MLO and R-MLO: "
            + "; ".join(parts)
        )
    return found


def _saliency_grid(prepared: PreparedImage) -> tuple[int, int]:
    rows, cols = prepared.prepared.frame.input_shape
    return max(1, round(rows / SALIENCY_DOWNSAMPLE)), max(1, round(cols / SALIENCY_DOWNSAMPLE))


def _downsample(plane: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(cv2.resize(np.ascontiguousarray(plane, dtype=np.float32),
                                 (size[1], size[0]), interpolation=cv2.INTER_AREA),
                      dtype=np.float32)


def exam_heatmaps(patch_model: LoadedModel, views: Mapping[Key, PreparedImage],
                  device: torch.device) -> dict[Key, dict[str, np.ndarray]]:
    """Malignant and benign heatmaps of each view, windowed like its model input.

    The grids of the four views are drawn from one ``random.Random(PATCH_GRID_SEED)`` in
    the order L-CC, R-CC, L-MLO, R-MLO; each view's patches run in batches.
    """
    order = [key for key in EXAM_VIEWS if key in views]
    grids = exam_patch_grids([views[key].prepared.flipped_crop.shape for key in order],
                             seed=PATCH_GRID_SEED)
    out: dict[Key, dict[str, np.ndarray]] = {}
    for key, grid in zip(order, grids, strict=True):
        prepared = views[key].prepared
        image = torch.from_numpy(standardize_whole(prepared.flipped_crop)).to(device)
        maps = generate_heatmaps(patch_model.module, image, grid)
        out[key] = {
            "malignant": window_plane(prepared, maps.malignant.cpu().numpy()),
            "benign": window_plane(prepared, maps.benign.cpu().numpy()),
        }
    return out


def view_probabilities(output: object) -> dict[Key, tuple[float, float]]:
    """(benign, malignant) per view from the model's output (batch of one exam).

    View-wise: the CC head's left/right prediction is the L-CC/R-CC score and the MLO
    head's the L-MLO/R-MLO score, so the mean of a breast's CC and MLO view scores is the
    paper's breast prediction. Image-wise: each view's own output.
    """
    if isinstance(output, SplitBreastOutput):
        return {
            (Laterality.LEFT, View.CC): (float(output.cc.left_benign[0]),
                                         float(output.cc.left_malignant[0])),
            (Laterality.RIGHT, View.CC): (float(output.cc.right_benign[0]),
                                          float(output.cc.right_malignant[0])),
            (Laterality.LEFT, View.MLO): (float(output.mlo.left_benign[0]),
                                          float(output.mlo.left_malignant[0])),
            (Laterality.RIGHT, View.MLO): (float(output.mlo.right_benign[0]),
                                           float(output.mlo.right_malignant[0])),
        }
    if isinstance(output, ImageWiseOutput):
        return {key: (float(benign[0]), float(malignant[0]))
                for key, benign, malignant in zip(EXAM_VIEWS, output.benign, output.malignant,
                                                  strict=True)}
    raise ModelError(f"unexpected DMV-CNN output {type(output).__name__}")


def forward_exam(member: LoadedModel, arrays: Mapping[Key, np.ndarray],
                 device: torch.device) -> dict[Key, tuple[float, float]]:
    """One forward of the four views ((C, H, W) or (H, W) float32 each); per-view scores."""
    tensors = []
    for key in EXAM_VIEWS:
        array = arrays[key]
        x = torch.from_numpy(np.ascontiguousarray(array[None] if array.ndim == 2 else array))
        tensors.append(x[None].to(device).contiguous(memory_format=torch.channels_last))
    with torch.inference_mode():
        return view_probabilities(member.module(*tensors))


class DmvRunner:
    """The DMV-CNN family: one exam-level forward of the four standard views."""

    def requests(self, member: LoadedModel, images: Sequence[ExamImage]) -> list[PrepareRequest]:
        recipe = DMV_RECIPES.get(member.spec.preprocessing)
        if recipe is None:
            raise ModelError(f"model {member.spec.name}: no DMV-CNN recipe for preprocessing "
                             f"{member.spec.preprocessing!r}")
        return [PrepareRequest(img, member.spec.input_size[img.view], recipe)
                for img in images if (img.laterality, img.view) in EXAM_VIEWS]

    def run(self, member: LoadedModel, inputs: ExamInputs) -> list[ViewScore]:
        requests = self.requests(member, inputs.images)
        views = _by_view(member, inputs, requests)
        heatmaps_from = member.spec.extra.get(HEATMAPS_FROM)
        channels = int(getattr(member.spec.hyperparameters, "input_channels", 1))
        if heatmaps_from is None and channels != 1:
            raise ModelError(f"model {member.spec.name} takes {channels} input channels but "
                             "names no heatmap model")
        saliency: dict[Key, tuple[np.ndarray, np.ndarray] | None] = dict.fromkeys(views)
        arrays: dict[Key, np.ndarray] = {k: p.prepared.array for k, p in views.items()}

        if heatmaps_from is not None:
            if inputs.augmented:
                raise ScoringError(
                    f"{member.spec.name} does not support test-time augmentation (the "
                    "augmented windows carry no heatmap channels); set TRIAGE_TTA_SAMPLES=0 "
                    "or remove the member from the ensemble"
                )
            started = time.perf_counter()
            maps = exam_heatmaps(member.companion(str(heatmaps_from)), views, inputs.device)
            log.info("heatmaps generated", extra={
                "member": member.spec.name, "seconds": round(time.perf_counter() - started, 3),
                "sop_instance_uids": [views[k].image.sop_instance_uid for k in EXAM_VIEWS]})
            for key, planes in maps.items():
                arrays[key] = np.stack([arrays[key], *(planes[c] for c in HEATMAP_CHANNELS)])
                grid = _saliency_grid(views[key])
                saliency[key] = (_downsample(planes["benign"], grid),
                                 _downsample(planes["malignant"], grid))

        augmented = {(r.image.laterality, r.image.view): inputs.augmented[r]
                     for r in requests if r in inputs.augmented}
        if augmented:
            probabilities = self._augmented(member, augmented, inputs.device)
        else:
            probabilities = forward_exam(member, arrays, inputs.device)

        scores = []
        for key in EXAM_VIEWS:
            prepared = views[key]
            p_benign, p_malignant = probabilities[key]
            maps_for_view = saliency[key]
            scores.append(ViewScore(
                member=member.spec.name, sop_instance_uid=prepared.image.sop_instance_uid,
                sop_class_uid=prepared.image.sop_class_uid, laterality=key[0], view=key[1],
                p_benign=p_benign, p_malignant=p_malignant,
                saliency_benign=None if maps_for_view is None else maps_for_view[0],
                saliency_malignant=None if maps_for_view is None else maps_for_view[1],
                frame=prepared.prepared.frame, rois=(),
                image_class=prepared.image.image_class.value,
            ))
        return scores

    @staticmethod
    def _augmented(member: LoadedModel, augmented: Mapping[Key, list[np.ndarray]],
                   device: torch.device) -> dict[Key, tuple[float, float]]:
        """Mean probabilities over the seeded windows: forward k sees window k of each view."""
        counts = {len(augmented.get(key, ())) for key in EXAM_VIEWS}
        if len(counts) != 1 or 0 in counts:
            raise ScoringError(f"{member.spec.name}: test-time augmentation needs the same "
                               "number of windows for all four views")
        n = counts.pop()
        runs = [forward_exam(member, {key: augmented[key][k] for key in EXAM_VIEWS}, device)
                for k in range(n)]
        return {key: (float(np.mean([r[key][0] for r in runs])),
                      float(np.mean([r[key][1] for r in runs])))
                for key in EXAM_VIEWS}


DMV = DmvRunner()
