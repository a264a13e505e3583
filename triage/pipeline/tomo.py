"""3D-GMIC members on tomosynthesis (DBT) views: one volume at a time, in bounded memory.

For each chosen DBT image of the exam the runner

1. reads the header only, then decodes the frames one at a time straight from the file, in
   slice order (position along the slice normal, :func:`~triage.imaging.volume.read_volume_frames`),
   into one float32 volume at the member's slice size
   (:func:`~triage.imaging.volume.prepare_volume`: crop window, flip and optimal centre
   decided once on the maximum-intensity projection, standardised over the volume). The
   stored pixel data is never held whole: stored DBT frames are often larger than the model
   window, so holding them would cost more than the volume itself;
2. runs the member on the volume under ``torch.inference_mode``: the global network sees
   ``slice_chunk`` slices at a time (:meth:`triage.models.gmic3d.GMIC3D.global_saliency`),
   so the activations held at once are those of one chunk, whatever the slice count; the
   volume stays in host memory and only chunks and the K crops move to an accelerator;
3. returns one ``ViewScore``: (benign, malignant) = the model's final prediction (mean of
   the global and local modules); the saliency maps of the slice with the highest saliency
   (the slice whose malignant map has the largest value; then the benign map's maximum;
   then the lower slice); the K ROIs, each with the slice it was cropped from; and the
   ``InputFrame`` mapping a slice-plane input pixel to the stored frame's pixel grid.

Slice numbers leave the pipeline as **stored frames**: ``ViewScore.saliency_slice`` and
``RoiPatch.frame`` are the 0-based stored frame of the slice, i.e. DICOM Referenced Frame
Number minus 1, which the SR and the overlay use as is. When the frames are stored in
position order (as they usually are) that is the slice index itself; when they are not,
the model still sees them in position order and the outputs still point at the right frame.

Peak memory of scoring one view: the float32 volume, one chunk's activations and a few
decoded frames; ``tests/unit/test_pipeline_tomo_memory.py`` measures it below 2.5 times the
volume for 60 slices.

A DBT image that cannot be read or prepared is left out with a note naming it and the
reason; the member fails (is left out of the run with the reason) only when no DBT view of
the exam could be scored. Not done here: test-time augmentation (the paper averages 10
random shifts per image; each would be another volume): with ``TRIAGE_TTA_SAMPLES`` set the
result says that DBT views were scored without it. Several 3D-GMIC members share each
prepared volume: a view is read once and scored by all of them before the next one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pydicom
import torch
from pydicom.errors import InvalidDicomError

from triage.errors import DecodeError, PreprocessingError, ScoringError, TriageError
from triage.imaging.volume import (
    PreparedVolume,
    VolumeInfo,
    choose_dbt_series,
    prepare_volume,
    read_volume_frames,
)
from triage.models import LoadedModel
from triage.pipeline.images import ExamImage
from triage.pipeline.runners import ExamInputs
from triage.pipeline.views2d import PrepareRequest
from triage.results import RoiPatch, ViewScore
from triage.vocabulary import ImageClass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VolumeScore:
    """One scored DBT view and what its preparation noticed."""

    score: ViewScore
    slices: int
    lossy: bool
    slab_reason: str | None  # why the object counts as slabs, None for thin slices


def load_volume(image: ExamImage, input_size: tuple[int, int]) -> PreparedVolume:
    """The 3D-GMIC input of one DBT object, its frames read from the file one at a time.

    Raises DecodeError when the file or a frame cannot be read, PreprocessingError when the
    volume cannot be oriented or prepared (both name the SOP Instance UID).
    """
    uid = image.sop_instance_uid
    try:
        header = pydicom.dcmread(image.path, stop_before_pixels=True)
        with open(image.path, "rb") as pixels:
            return prepare_volume(header, input_size, pixels_from=pixels)
    except (OSError, InvalidDicomError) as exc:
        raise DecodeError(f"instance {uid}: cannot read the DBT object {image.path} ({exc}); "
                          "check the spool volume, or ask the sender to resend") from exc
    except (AttributeError, KeyError, TypeError) as exc:  # malformed functional groups
        raise PreprocessingError(f"instance {uid}: DBT header cannot be interpreted "
                                 f"({type(exc).__name__}: {exc})") from exc


def brightest_slice(saliency: np.ndarray) -> int:
    """Index of the slice with the highest saliency in maps ``(D, C, h, w)`` (C = benign,
    malignant): largest malignant maximum, then largest benign maximum, then lowest index."""
    if saliency.ndim != 4 or saliency.shape[1] < 2 or saliency.shape[0] < 1:
        raise ValueError(f"saliency must be (D, 2, h, w), got {saliency.shape}")
    flat = saliency.reshape(saliency.shape[0], saliency.shape[1], -1).max(axis=2)
    order = np.lexsort((np.arange(flat.shape[0]), -flat[:, 0], -flat[:, 1]))
    return int(order[0])


def load_checked_volume(image: ExamImage, input_size: tuple[int, int]) -> PreparedVolume:
    """``load_volume``, refusing a volume whose functional groups contradict the laterality
    and view read at ingest."""
    volume = load_volume(image, input_size)
    if (volume.laterality, volume.view) != (image.laterality, image.view):
        raise PreprocessingError(
            f"instance {image.sop_instance_uid}: laterality/view read at ingest "
            f"({image.laterality.value} {image.view.value}) differ from the DBT functional "
            f"groups ({volume.laterality.value} {volume.view.value}); fix the header at the "
            "modality"
        )
    return volume


def score_volume(member: LoadedModel, image: ExamImage, device: torch.device) -> VolumeScore:
    """Prepare one DBT view and run a 3D-GMIC member on it (see the module docstring)."""
    volume = load_checked_volume(image, member.spec.input_size[image.view])
    return score_prepared(member, image, volume, device)


def score_prepared(member: LoadedModel, image: ExamImage, volume: PreparedVolume,
                   device: torch.device) -> VolumeScore:
    """Run a 3D-GMIC member on a volume prepared at its input size."""
    uid = image.sop_instance_uid
    frames = volume.frame_indices
    x = torch.from_numpy(volume.array)[None, None]  # (1, 1, D, H, W): no copy
    with torch.inference_mode():
        out = member.module(x)
    del x
    probs = out.final_prediction[0].float().cpu().numpy()
    saliency = out.saliency_map.float().cpu().numpy()  # (D, C, h, w)
    shown = brightest_slice(saliency)
    crop_h, crop_w = member.spec.hyperparameters.crop_shape
    locations = out.patch_locations[0].cpu().numpy()
    slices = out.slice_numbers[0].cpu().numpy()
    attention = out.patch_attention[0].float().cpu().numpy()
    rois = tuple(
        RoiPatch(top=int(r), left=int(c), height=int(crop_h), width=int(crop_w),
                 attention=float(a), frame=int(frames[int(s)]))
        for (r, c), s, a in zip(locations, slices, attention, strict=True)
    )
    score = ViewScore(
        member=member.spec.name, sop_instance_uid=uid, sop_class_uid=image.sop_class_uid,
        laterality=image.laterality, view=image.view,
        p_benign=float(probs[0]), p_malignant=float(probs[1]),
        saliency_benign=np.array(saliency[shown, 0], dtype=np.float32),
        saliency_malignant=np.array(saliency[shown, 1], dtype=np.float32),
        frame=volume.frame, rois=rois, saliency_slice=int(frames[shown]),
        image_class=ImageClass.DBT.value,
    )
    log.debug("scored DBT view", extra={"member": member.spec.name, "sop_instance_uid": uid,
                                        "slices": volume.depth, "saliency_frame": frames[shown]})
    return VolumeScore(score=score, slices=volume.depth, lossy=volume.lossy,
                       slab_reason=volume.info.slab_reason)


def prefer_thin_slices(chosen: Sequence[ExamImage],
                       dbt: Sequence[ExamImage]) -> list[ExamImage]:
    """Replace each chosen DBT image by the best DBT object of its view (``choose_dbt_series``:
    thin slices before slabs, then the finer spacing).

    The exam's chosen set (assembly) takes the latest acquired image per view; a vendor that
    sends a 1 mm reconstruction and a slab series of the same view needs the thin one
    (3D-GMIC was trained on 1 mm slices). Headers only; an unreadable header keeps the
    assembly's choice for that view.
    """
    infos: list[VolumeInfo] = []
    by_uid = {img.sop_instance_uid: img for img in dbt}
    for img in dbt:
        try:
            infos.append(read_volume_frames(pydicom.dcmread(img.path, stop_before_pixels=True)))
        except (OSError, InvalidDicomError, DecodeError, PreprocessingError, ValueError) as exc:
            log.warning("DBT header unreadable; keeping the exam's choice for its view",
                        extra={"sop_instance_uid": img.sop_instance_uid, "error": str(exc)})
    best = {key: by_uid[info.sop_instance_uid] for key, info in choose_dbt_series(infos).items()}
    out = []
    for img in chosen:
        pick = best.get((img.laterality, img.view)) if img.image_class is ImageClass.DBT else None
        if pick is not None and pick.sop_instance_uid != img.sop_instance_uid:
            log.info("DBT view: thin slices scored instead of the latest object",
                     extra={"chosen": img.sop_instance_uid, "scored": pick.sop_instance_uid})
            img = pick
        out.append(img)
    return out


class TomoRunner:
    """3D-GMIC (Park et al.) on each DBT view of the exam; decodes its own input."""

    def requests(self, member: LoadedModel, images: Sequence[ExamImage]) -> list[PrepareRequest]:
        return []

    def run(self, member: LoadedModel, inputs: ExamInputs) -> list[ViewScore]:
        outcome = self.run_members([member], inputs)[member.spec.name]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def run_members(self, members: Sequence[LoadedModel],
                    inputs: ExamInputs) -> dict[str, list[ViewScore] | Exception]:
        """Each DBT view is prepared once per input size and scored by every member before
        the next view is read (memory: one volume at a time, whatever the member count)."""
        scores: dict[str, list[ViewScore]] = {m.spec.name: [] for m in members}
        failed: dict[str, Exception] = {}
        for image in inputs.images:
            if image.image_class is not ImageClass.DBT:
                continue
            volumes: dict[tuple[int, int], PreparedVolume | None] = {}
            for member in members:
                name = member.spec.name
                size = member.spec.input_size[image.view]
                if name in failed:
                    continue
                if size not in volumes:
                    volumes[size] = self._volume(image, size, inputs.notes)
                volume = volumes[size]
                if volume is None:
                    continue
                try:
                    scores[name].append(score_prepared(member, image, volume,
                                                       inputs.device).score)
                except (TriageError, RuntimeError, ValueError) as exc:
                    failed[name] = exc
            del volumes
        out: dict[str, list[ViewScore] | Exception] = {}
        for member in members:
            name = member.spec.name
            out[name] = failed.get(name) or scores[name] or ScoringError(
                "no DBT view of the exam could be decoded and prepared")
        return out

    @staticmethod
    def _volume(image: ExamImage, size: tuple[int, int],
                notes: list[str]) -> PreparedVolume | None:
        """The prepared volume, or None (with a note) when the view cannot be read."""
        try:
            volume = load_checked_volume(image, size)
        except (DecodeError, PreprocessingError) as exc:
            log.warning("DBT view not scorable", extra={
                "sop_instance_uid": image.sop_instance_uid, "error": str(exc)})
            notes.append(f"view {image.sop_instance_uid} not scored: {exc}")
            return None
        if volume.lossy:
            notes.append("lossy-compressed input images")
        if volume.info.slab_reason:
            notes.append(f"DBT view {image.sop_instance_uid} scored on slabs "
                         f"({volume.info.slab_reason}); 3D-GMIC was trained on 1 mm slices")
        return volume


TOMO = TomoRunner()
