"""3D-GMIC region-of-interest retrieval (Park et al., Algorithm 1), as pure functions.

``retrieve_roi_from_3d_image`` picks ``K`` windows of a volume's saliency maps ``A`` of
shape ``(D, C, h, w)`` (slices, classes, map rows, map columns):

1. each class channel is min-max normalised over the whole volume (all slices together),
   ``(a - min) / (max - min)`` in float32 (subtract first, then divide), and the channels
   are summed into a criterion map ``(D, h, w)``;
2. the criterion of a window is the average of that map over the window (stride 1,
   windows fully inside the map), computed as a direct per-window average in float64
   (never as float32 cumulative sums, whose rounding can reorder near-ties);
3. every slice picks its own best window (the first in row-major order on equal
   criteria); the slice whose best window has the largest criterion wins, the lowest
   slice index on equal values;
4. the chosen window is set to 0 in the chosen slice and in every slice within ``zeta``
   of it (clipped to the volume); other slices keep it, so they may pick the same
   position later. ``zeta = 0`` erases it from the chosen slice only.

Positions convert to input pixels with ``round(row / h * H)`` (round half to even), as in
2D (:func:`triage.models.roi.map_to_input`). In training the paper samples the cropped
slice uniformly from the ``±zeta`` neighbours; the product only runs inference, so the
cropped slice is always the winning one.

Deliberate difference from the reference: when a class is constant over the whole volume
(typically all zero, frequent with relu∘tanh saliency) its normalisation is 0/0; the
reference then turns the whole criterion into NaN and returns slice 0, position (0, 0)
at every step. Here such a class is normalised to all zeros (it carries no localisation
information), so the other class still drives the search.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from triage.models.roi import (
    check_picks,
    map_to_input,
    normalized_criterion_map,
    window_on_map,
)

#: Neighbouring-slice half-width of the paper (``slice_threshold_dist`` in the reference).
DEFAULT_ZETA = 10


class Roi3D(NamedTuple):
    """The windows picked in one volume, in pick order (all int64).

    ``slices`` (K,) — slice of each pick; ``cam_positions`` (K, 2) — upper-left
    ``(row, col)`` on the saliency map; ``patch_locations`` (K, 2) — the same in input
    pixels; ``cam_positions_all_slices`` / ``patch_locations_all_slices`` (D, K, 2) — for
    every slice, that slice's own best window at each step (before slice selection).
    """

    slices: Tensor
    cam_positions: Tensor
    patch_locations: Tensor
    cam_positions_all_slices: Tensor
    patch_locations_all_slices: Tensor


def volume_criterion_map(saliency: Tensor) -> Tensor:
    """Criterion map ``(D, h, w)`` float32: classes normalised over all slices, summed."""
    if saliency.dim() != 4:
        raise ValueError(f"saliency must be (D, C, h, w), got shape {tuple(saliency.shape)}")
    d, c, h, w = saliency.shape
    # One "map" per class spanning all slices: (1, C, D*h, w); the element-wise
    # normalisation is then exactly the 2D one with the extrema taken over the volume.
    stacked = saliency.transpose(0, 1).reshape(1, c, d * h, w)
    return normalized_criterion_map(stacked).reshape(d, h, w)


def greedy_windows_3d(criterion: Tensor, k: int, window: tuple[int, int],
                      zeta: int) -> tuple[Tensor, Tensor]:
    """Greedy selection of ``k`` windows on a ``(D, h, w)`` criterion volume.

    Returns ``(slices (k,), all_slices (D, k, 2))`` int64: the winning slice of each step
    and every slice's own best window at each step; the pick of step ``j`` is
    ``all_slices[slices[j], j]``.
    """
    if criterion.dim() != 3:
        raise ValueError(f"criterion must be (D, h, w), got {tuple(criterion.shape)}")
    d, h, w = criterion.shape
    wh, ww = check_picks(window, (h, w), k)
    if zeta < 0:
        raise ValueError(f"zeta must be at least 0, got {zeta}")
    device = criterion.device
    work = criterion.double().clone()
    n_cols = w - ww + 1
    chosen_slices = []
    per_slice = []
    for _ in range(k):
        scores = F.avg_pool2d(work[:, None], (wh, ww), stride=1).flatten(1)  # (D, windows)
        best_value, best_index = scores.max(dim=1)  # first maximum: row-major order
        top = torch.div(best_index, n_cols, rounding_mode="floor")
        left = best_index - top * n_cols
        per_slice.append(torch.stack((top, left), dim=1))
        chosen = int(best_value.argmax())  # first maximum: lowest slice index
        row, col = int(top[chosen]), int(left[chosen])
        first, last = max(0, chosen - zeta), min(d - 1, chosen + zeta)
        work[first:last + 1, row:row + wh, col:col + ww] = 0.0
        chosen_slices.append(chosen)
    slices = torch.tensor(chosen_slices, dtype=torch.int64, device=device)
    return slices, torch.stack(per_slice, dim=1).to(torch.int64)


def retrieve_roi_from_3d_image(saliency: Tensor, k: int, crop_shape: tuple[int, int],
                               input_hw: tuple[int, int], zeta: int = DEFAULT_ZETA) -> Roi3D:
    """3D-GMIC's ROI retrieval on saliency maps ``(D, C, h, w)`` of ``input_hw`` slices.

    Crops of ``crop_shape`` input pixels correspond to a window of
    :func:`~triage.models.roi.window_on_map` cells. Positions are upper-left ``(row, col)``.
    """
    if saliency.dim() != 4:
        raise ValueError(f"saliency must be (D, C, h, w), got shape {tuple(saliency.shape)}")
    map_hw = (int(saliency.shape[-2]), int(saliency.shape[-1]))
    window = window_on_map(crop_shape, map_hw, input_hw)
    with torch.autocast(device_type=saliency.device.type, enabled=False):
        slices, all_slices = greedy_windows_3d(volume_criterion_map(saliency), k, window, zeta)
    steps = torch.arange(k, device=slices.device)
    cam = all_slices[slices, steps]
    all_pixels = map_to_input(all_slices, map_hw, input_hw)
    return Roi3D(
        slices=slices,
        cam_positions=cam,
        patch_locations=all_pixels[slices, steps],
        cam_positions_all_slices=all_slices,
        patch_locations_all_slices=all_pixels,
    )


#: Short name, parallel to :func:`triage.models.roi.retrieve_roi`.
retrieve_roi_3d = retrieve_roi_from_3d_image
