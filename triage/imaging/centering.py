"""The reference's "optimal centre" of the model window on the flipped, cropped image.

Rules (fixtures README, "Optimal centre"; pinned by ``best_center`` in the fixtures):

* Score of a window = number of pixels with value > 0 inside it (artefacts included).
  A window starting above/left of the image is shifted to start at 0 (same size) and then
  clipped to the image. ``com`` = (H_c // 2, W_c // 2).
* CC: x = rightmost_x - w//2 - 1; y candidates h//2 ... H_c - (h - h//2) (step 1) when
  H_c > h, else the single candidate com_y.
* MLO: one candidate, y = b - h//2 - 1 and x as CC, where b = min(bottommost y, last row
  holding a non-zero pixel within the last w columns (all columns when W_c <= w)).
* Best score wins; ties: smallest squared distance to com, then candidate order.
  A single candidate is returned unscored. Centres may lie outside the image.
"""

from __future__ import annotations

import numpy as np

from triage.vocabulary import View


def _window_scores(
    nonzero: np.ndarray, centers: np.ndarray, size: tuple[int, int]
) -> np.ndarray:
    """Non-zero pixel counts of the windows centred on ``centers`` ((N, 2) int array)."""
    height, width = size
    rows, cols = nonzero.shape
    integral = np.zeros((rows + 1, cols + 1), dtype=np.int64)
    integral[1:, 1:] = nonzero.cumsum(axis=0, dtype=np.int64).cumsum(axis=1)
    top = np.maximum(centers[:, 0] - height // 2, 0)
    left = np.maximum(centers[:, 1] - width // 2, 0)
    bottom = np.clip(top + height, 0, rows)
    right = np.clip(left + width, 0, cols)
    top = np.minimum(top, rows)
    left = np.minimum(left, cols)
    return np.asarray(
        integral[bottom, right] - integral[top, right] - integral[bottom, left] + integral[top, left]
    )


def candidate_centers(
    flipped_crop: np.ndarray,
    view: View,
    rightmost_points: tuple[tuple[int, int], int],
    bottommost_points: tuple[int, tuple[int, int]],
    input_size: tuple[int, int],
) -> list[tuple[int, int]]:
    """The reference's candidate centres (y, x), in candidate order."""
    height, width = input_size
    crop_height, crop_width = flipped_crop.shape
    center_x = rightmost_points[1] - width // 2 - 1
    if View(view) is View.CC:
        if crop_height > height:
            return [
                (y, center_x) for y in range(height // 2, crop_height - (height - height // 2) + 1)
            ]
        return [(crop_height // 2, center_x)]
    columns = flipped_crop[:, crop_width - width :] if crop_width > width else flipped_crop
    nonzero_rows = np.flatnonzero((columns > 0).any(axis=1))
    bottom = int(bottommost_points[0])
    if nonzero_rows.size:  # always true for a real crop; guard keeps the rule total
        bottom = min(bottom, int(nonzero_rows[-1]))
    return [(bottom - height // 2 - 1, center_x)]


def best_center(
    flipped_crop: np.ndarray,
    view: View,
    rightmost_points: tuple[tuple[int, int], int],
    bottommost_points: tuple[int, tuple[int, int]],
    input_size: tuple[int, int],
) -> tuple[int, int]:
    """The window centre (y, x) on the flipped cropped image that the reference picks."""
    candidates = candidate_centers(
        flipped_crop, view, rightmost_points, bottommost_points, input_size
    )
    if len(candidates) == 1:
        return candidates[0]
    centers = np.asarray(candidates, dtype=np.int64)
    scores = _window_scores(np.asarray(flipped_crop) > 0, centers, input_size)
    com_y, com_x = flipped_crop.shape[0] // 2, flipped_crop.shape[1] // 2
    distances = (centers[:, 0] - com_y) ** 2 + (centers[:, 1] - com_x) ** 2
    best = np.flatnonzero(scores == scores.max())
    winner = best[np.argmin(distances[best])]  # argmin keeps the first on equal distance
    return int(centers[winner, 0]), int(centers[winner, 1])
