"""Breast cropping of a raw mammogram, as the NYU reference pipelines do it.

Re-implemented from the behaviour recorded in the shared fixtures (``preprocessing.json``,
``preprocessing_synthetic.json``) and the fixtures README ("Cropping"); the fixtures pin
every integer this module returns.

The algorithm works on the raw, unflipped image. ``faces_right`` says where the breast
points: ``True`` when the chest wall is on the left edge and the nipple points right
(a left breast stored the usual way), ``False`` for the mirror image (a right breast).

1. Foreground = every pixel whose value is > 0.
2. Erode by the 3x3 cross ``iterations`` times (pixels outside the image are background).
3. Keep the largest 4-connected component (ties: the first in raster order).
4. Dilate that component by the cross ``iterations`` times, clipped to the image.
5. Bounding box, bottommost points, buffers, distance from the chest-wall side and the
   rightmost points, with the reference's exact off-by-one conventions (see below).

Speed: ``iterations`` erosions by the 3x3 cross equal one erosion by the L1 ball
("diamond") of that radius, i.e. a threshold on the city-block distance to the nearest
background pixel; likewise for the dilation. OpenCV's exact L1 distance transform does
that in one pass instead of 100 (``tests/unit/test_imaging_cropping.py`` checks equality
with ``scipy.ndimage`` iterated erosion/dilation).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage

from triage.errors import PreprocessingError

logger = logging.getLogger(__name__)

#: Reference settings (``preprocessing.json`` -> ``settings``).
CROP_ITERATIONS = 100
CROP_BUFFER = 50
RIGHTMOST_FROM_RATIO = (1, 3)


@dataclass(frozen=True)
class CropResult:
    """Where the breast is in the raw image, in the reference's conventions.

    ``window_location`` is (top, bottom, left, right) in raw pixel coordinates, bottom/right
    exclusive. ``rightmost_points`` = ((y_first, y_last), x) and ``bottommost_points`` =
    (y, (x_first, x_last)) are in the cropped image after the conceptual flip that makes
    the breast face right (with the reference's "one larger than the mirrored column"
    convention for left-facing images).
    """

    window_location: tuple[int, int, int, int]
    rightmost_points: tuple[tuple[int, int], int]
    bottommost_points: tuple[int, tuple[int, int]]
    distance_from_starting_side: int
    faces_right: bool

    @property
    def cropped_shape(self) -> tuple[int, int]:
        top, bottom, left, right = self.window_location
        return bottom - top, right - left

    @property
    def orientation_mode(self) -> str:
        """The reference's name for the raw facing: ``"right"`` or ``"left"``."""
        return "right" if self.faces_right else "left"


def erode_diamond(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary erosion by the L1 ball of ``radius`` (= ``radius`` erosions by the 3x3 cross).

    Pixels outside the image count as background, as in ``scipy.ndimage.binary_erosion``
    with its default ``border_value=0``.
    """
    if radius <= 0:
        return mask.astype(bool, copy=True)
    padded = np.pad(mask.astype(np.uint8), 1)
    distance = cv2.distanceTransform(padded, cv2.DIST_L1, 3)
    return np.asarray(distance[1:-1, 1:-1] > radius)


def dilate_diamond(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation by the L1 ball of ``radius``, clipped to the image.

    Equal to ``radius`` dilations by the 3x3 cross: a lattice path of length <= radius
    between two pixels of a rectangle stays inside the rectangle.
    """
    if radius <= 0:
        return mask.astype(bool, copy=True)
    if not mask.any():
        return np.zeros(mask.shape, dtype=bool)
    background = np.logical_not(mask).astype(np.uint8)
    distance = cv2.distanceTransform(background, cv2.DIST_L1, 3)
    return np.asarray(distance <= radius)


def largest_component(mask: np.ndarray) -> np.ndarray | None:
    """The largest 4-connected component of ``mask`` (ties: lowest label = first in
    raster order), or ``None`` when ``mask`` is empty."""
    labels, count = ndimage.label(mask)
    if count == 0:
        return None
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return np.asarray(labels == int(np.argmax(sizes)))


def breast_mask(
    pixels: np.ndarray, *, iterations: int = CROP_ITERATIONS
) -> np.ndarray:
    """The dilated largest component of the eroded foreground (steps 1-4)."""
    foreground = np.asarray(pixels) > 0
    eroded = erode_diamond(foreground, iterations)
    component = largest_component(eroded)
    if component is None:
        raise PreprocessingError(
            "no breast found: nothing of the image survives the cropping erosion "
            f"({iterations} iterations; image {pixels.shape[0]}x{pixels.shape[1]}, "
            f"{int(foreground.sum())} non-zero pixels). The image is blank, too small, or "
            "its background is not 0 (check MONOCHROME1 inversion / VOI handling)."
        )
    return dilate_diamond(component, iterations)


def crop_mammogram(
    pixels: np.ndarray,
    faces_right: bool,
    *,
    iterations: int = CROP_ITERATIONS,
    buffer: int = CROP_BUFFER,
) -> CropResult:
    """Locate the breast in a raw (unflipped) mammogram; see the module docstring."""
    if pixels.ndim != 2:
        raise PreprocessingError(f"expected a 2-D image, got shape {pixels.shape}")
    height, width = pixels.shape
    mask = breast_mask(pixels, iterations=iterations)

    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    top, bottom = int(rows[0]), int(rows[-1]) + 1
    left, right = int(cols[0]), int(cols[-1]) + 1

    # Bottommost points, on the unbuffered box.
    bottom_row = bottom - 1
    bottom_cols = np.flatnonzero(mask[bottom_row])
    bottom_first, bottom_last = int(bottom_cols[0]), int(bottom_cols[-1])

    # Vertical buffer on both sides; horizontal buffer only on the nipple side.
    top -= min(top, buffer)
    bottom += min(height - bottom, buffer)
    if faces_right:
        distance_from_starting_side = left
        right += min(width - right, buffer)
        bottommost = (bottom_row - top, (bottom_first - left, bottom_last - left))
    else:
        distance_from_starting_side = width - right
        left -= min(left, buffer)
        # Reference convention: right - x (not right - 1 - x), listed in increasing order.
        bottommost = (bottom_row - top, (right - bottom_last, right - bottom_first))

    crop_mask = mask[top:bottom, left:right]
    crop_height, crop_width = crop_mask.shape
    skipped = int(crop_height * RIGHTMOST_FROM_RATIO[0] / RIGHTMOST_FROM_RATIO[1])
    searched = crop_mask[skipped:]
    search_cols = np.flatnonzero(searched.any(axis=0))
    if search_cols.size == 0:
        raise PreprocessingError(
            "no breast tissue in the lower two thirds of the breast bounding box; "
            "the image is not a usable CC/MLO mammogram"
        )
    if faces_right:
        column = int(search_cols[-1])
        recorded_x = column
    else:
        column = int(search_cols[0])
        recorded_x = crop_width - column  # reference convention, see bottommost
    column_rows = np.flatnonzero(searched[:, column]) + skipped
    rightmost = ((int(column_rows[0]), int(column_rows[-1])), int(recorded_x))

    result = CropResult(
        window_location=(top, bottom, left, right),
        rightmost_points=rightmost,
        bottommost_points=(int(bottommost[0]), (int(bottommost[1][0]), int(bottommost[1][1]))),
        distance_from_starting_side=int(distance_from_starting_side),
        faces_right=faces_right,
    )
    if result.distance_from_starting_side:
        logger.debug(
            "breast does not touch the chest-wall edge",
            extra={"distance_from_starting_side": result.distance_from_starting_side},
        )
    return result
