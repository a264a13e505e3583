"""Pixels in, model inputs out: decoding, orientation, the reference mammogram
preprocessing (crop, optimal centre, padding, window, standardisation), test-time
augmentation and the patch-classifier grid. Knows numpy/cv2/scipy/pydicom, not the DB or
the network.
"""

from triage.imaging.augment import (
    AugmentedInput,
    AugmentedWindow,
    random_window,
    sample_windows,
)
from triage.imaging.auxiliary import prepare_view_resized, window_plane
from triage.imaging.centering import best_center
from triage.imaging.cropping import CropResult, crop_mammogram
from triage.imaging.decode import DecodedPixels, decode_pixels, iter_frames, lossy_reason
from triage.imaging.orientation import Orientation, needs_flip, resolve_orientation
from triage.imaging.patches import (
    PatchGrid,
    exam_patch_grids,
    extract_patches,
    patch_grid,
    standardize_whole,
    stride_list,
)
from triage.imaging.prepare import PreparedView, crop_and_flip, prepare_view, preprocess_record
from triage.imaging.windowing import Padding, Window, resize_input, scaled_size, standardize

__all__ = [
    "AugmentedInput",
    "AugmentedWindow",
    "CropResult",
    "DecodedPixels",
    "Orientation",
    "Padding",
    "PatchGrid",
    "PreparedView",
    "Window",
    "best_center",
    "crop_and_flip",
    "crop_mammogram",
    "decode_pixels",
    "exam_patch_grids",
    "extract_patches",
    "iter_frames",
    "lossy_reason",
    "needs_flip",
    "patch_grid",
    "prepare_view",
    "prepare_view_resized",
    "preprocess_record",
    "random_window",
    "resize_input",
    "resolve_orientation",
    "sample_windows",
    "scaled_size",
    "standardize",
    "standardize_whole",
    "stride_list",
    "window_plane",
]
