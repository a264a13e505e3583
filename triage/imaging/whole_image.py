"""Whole-image preprocessing of the all-convolutional classifier (Shen et al. 2019).

The paper: "All mammograms were converted into PNG format and downsized to 1152 x 896
using interpolation; no image cropping was performed", then the training set's mean grey
value is subtracted; "no other preprocessing was applied". Here, from a decoded view in
the pixel contract (:mod:`triage.imaging.decode`: Modality LUT applied, dense tissue
bright, stored geometry):

1. grey values are scaled linearly so that the image's maximum becomes 255. The authors
   rescale 16-bit PNGs by 255/65535 so that "the max value is 255"; a DICOM frame has no
   PNG range, and the recipe sees only the pixels, so the image's own maximum stands in
   for the format's (for digitised film spanning the 16-bit range the two nearly agree).
   A blank image (maximum <= 0) cannot be scaled and is refused;
2. the whole image, uncropped and not mirrored, is resized to the input size with
   ``cv2.INTER_CUBIC`` (the paper says only "interpolation"; the authors' image reader uses
   bicubic), ignoring the aspect ratio as the paper does.

The mean is not subtracted here: it belongs to the weights (``AllConvConfig.pixel_mean``)
and the pipeline subtracts it, so every all-conv member shares one prepared input.

The result is a :class:`PreparedView` whose ``array`` is the 0-255 model input. Its
``frame`` spans the whole source image (no crop, flip, padding or window), so a map that
spans the model input lands on the whole source image (outputs resample maps onto
``frame.input_shape``, here the source size). Fields of the reference (GMIC) recipe that
have no meaning without a crop are neutral: crop window = the whole image, no padding,
``best_center`` the centre, extreme points and distance zero; ``flipped_crop`` is the whole
image as decoded (raw values, not mirrored: ``flipped`` is False).
"""

from __future__ import annotations

import cv2
import numpy as np

from triage.errors import PreprocessingError
from triage.imaging.orientation import resolve_orientation
from triage.imaging.prepare import PreparedView
from triage.imaging.windowing import Padding, Window
from triage.results import InputFrame
from triage.vocabulary import Laterality, View

#: Grey value the image maximum is scaled to (the authors' 8-bit scale).
WHOLE_IMAGE_MAX = 255.0


def scale_to_255(image: np.ndarray) -> np.ndarray:
    """``image * 255 / max(image)`` in float32; PreprocessingError for a blank image."""
    values = np.asarray(image, dtype=np.float32)
    peak = float(values.max()) if values.size else 0.0
    if not np.isfinite(peak) or peak <= 0:
        raise PreprocessingError(
            f"the image has no positive pixel value (maximum {peak}); a blank or "
            "non-finite image cannot be scaled for the all-convolutional model")
    return values * np.float32(WHOLE_IMAGE_MAX / peak)


def prepare_whole_image(pixels: np.ndarray, laterality: Laterality, view: View,
                        input_size: tuple[int, int]) -> PreparedView:
    """The whole view scaled to 0-255 and resized to ``input_size`` (module docstring)."""
    image = np.asarray(pixels)
    if image.ndim != 2:
        raise PreprocessingError(f"expected a single 2-D frame, got an array of shape "
                                 f"{image.shape}")
    height, width = int(input_size[0]), int(input_size[1])
    if height <= 0 or width <= 0:
        raise PreprocessingError(f"invalid model input size {input_size}")
    rows, cols = int(image.shape[0]), int(image.shape[1])
    scaled = scale_to_255(image)
    if (rows, cols) == (height, width):
        array = np.array(scaled, dtype=np.float32, order="C", copy=True)
    else:
        array = np.asarray(cv2.resize(scaled, (width, height), interpolation=cv2.INTER_CUBIC),
                           dtype=np.float32)
    frame = InputFrame(source_shape=(rows, cols), crop_top=0, crop_left=0,
                       cropped_shape=(rows, cols), flipped=False, pad_top=0, pad_left=0,
                       window_top=0, window_left=0, input_shape=(rows, cols))
    return PreparedView(
        array=array,
        laterality=Laterality(laterality),
        view=View(view),
        input_size=(height, width),
        crop_window=(0, rows, 0, cols),
        cropped_shape=(rows, cols),
        flipped=False,
        best_center=(rows // 2, cols // 2),
        padding=Padding(),
        final_window=Window(0, rows, 0, cols),
        rightmost_points=((0, 0), 0),
        bottommost_points=(0, (0, 0)),
        distance_from_starting_side=0,
        orientation=resolve_orientation(Laterality(laterality)),
        frame=frame,
        flipped_crop=np.asarray(image, dtype=np.float32),
    )
