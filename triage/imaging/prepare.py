"""From a decoded mammogram to one model input: crop, flip, centre, pad, window, standardise.

This is the reference 2D preprocessing of the NYU models (GMIC, DMV-CNN); the integers and
the float32 bytes of the result match the shared fixtures. Input pixels follow the decode
contract (:mod:`triage.imaging.decode`): Modality LUT applied, no VOI LUT, dense tissue
bright, background 0, in the stored geometry (a right breast normally faces left).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from triage.errors import PreprocessingError
from triage.imaging.centering import best_center
from triage.imaging.cropping import CropResult, crop_mammogram
from triage.imaging.orientation import Orientation, resolve_orientation
from triage.imaging.windowing import Padding, Window, inference_window, standardize
from triage.results import InputFrame
from triage.vocabulary import Laterality, View

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedView:
    """One preprocessed view and every decision the preprocessing took.

    ``array`` is the standardised float32 model input of shape ``input_size``.
    ``flipped_crop`` is the cropped image turned to face right (float32, raw values),
    which test-time augmentation and the patch grid start from. Coordinates follow the
    fixtures: ``crop_window`` in source pixels, ``best_center``/``final_window`` in the
    flipped crop (padded for the window), ``frame`` maps model-input pixels to the source.
    """

    array: np.ndarray
    laterality: Laterality
    view: View
    input_size: tuple[int, int]
    crop_window: tuple[int, int, int, int]
    cropped_shape: tuple[int, int]
    flipped: bool
    best_center: tuple[int, int]
    padding: Padding
    final_window: Window
    rightmost_points: tuple[tuple[int, int], int]
    bottommost_points: tuple[int, tuple[int, int]]
    distance_from_starting_side: int
    orientation: Orientation
    frame: InputFrame
    flipped_crop: np.ndarray

    @property
    def padded_shape(self) -> tuple[int, int]:
        height, width = self.cropped_shape
        return height + self.padding.top + self.padding.bottom, width + self.padding.right


def crop_and_flip(
    pixels: np.ndarray, faces_right: bool
) -> tuple[CropResult, np.ndarray]:
    """Crop the breast and mirror it to face right; the crop is float32 raw values."""
    crop = crop_mammogram(pixels, faces_right)
    top, bottom, left, right = crop.window_location
    cropped = np.array(pixels[top:bottom, left:right], dtype=np.float32)  # always a copy
    flipped = cropped if faces_right else np.ascontiguousarray(np.fliplr(cropped))
    return crop, flipped


def prepare_view(
    pixels: np.ndarray,
    laterality: Laterality,
    view: View,
    input_size: tuple[int, int],
    *,
    patient_orientation: str | Sequence[str] | None = None,
    strict_orientation: bool = False,
    sop_instance_uid: str | None = None,
) -> PreparedView:
    """Preprocess one decoded view exactly as the reference does at test time.

    ``patient_orientation`` (the DICOM value, optional) is checked against the laterality
    (see :mod:`triage.imaging.orientation`). Raises PreprocessingError when no breast can
    be found or the orientation cannot be used.
    """
    image = np.asarray(pixels)
    if image.ndim != 2:
        raise PreprocessingError(
            f"expected a single 2-D frame, got an array of shape {image.shape}"
        )
    height, width = int(input_size[0]), int(input_size[1])
    if height <= 0 or width <= 0:
        raise PreprocessingError(f"invalid model input size {input_size}")
    orientation = resolve_orientation(
        Laterality(laterality),
        patient_orientation,
        strict=strict_orientation,
        sop_instance_uid=sop_instance_uid,
    )
    crop, flipped_crop = crop_and_flip(image, orientation.faces_right)
    view = View(view)
    center = best_center(
        flipped_crop, view, crop.rightmost_points, crop.bottommost_points, (height, width)
    )
    padding, window = inference_window(flipped_crop.shape, view, center, (height, width))
    padded = padding.apply(flipped_crop)
    array = standardize(window.cut(padded))

    top, _, left, _ = crop.window_location
    frame = InputFrame(
        source_shape=(int(image.shape[0]), int(image.shape[1])),
        crop_top=top,
        crop_left=left,
        cropped_shape=crop.cropped_shape,
        flipped=orientation.needs_flip,
        pad_top=padding.top,
        pad_left=padding.left,
        window_top=window.top,
        window_left=window.left,
        input_shape=(height, width),
    )
    logger.debug(
        "prepared view",
        extra={
            "sop_instance_uid": sop_instance_uid,
            "crop_window": crop.window_location,
            "best_center": center,
        },
    )
    return PreparedView(
        array=array,
        laterality=Laterality(laterality),
        view=view,
        input_size=(height, width),
        crop_window=crop.window_location,
        cropped_shape=crop.cropped_shape,
        flipped=orientation.needs_flip,
        best_center=center,
        padding=padding,
        final_window=window,
        rightmost_points=crop.rightmost_points,
        bottommost_points=crop.bottommost_points,
        distance_from_starting_side=crop.distance_from_starting_side,
        orientation=orientation,
        frame=frame,
        flipped_crop=flipped_crop,
    )


#: The name the reference validator uses; the same function.
preprocess_record = prepare_view
