"""GMIC region-of-interest retrieval (Shen et al. 2021, Algorithm 1), as pure functions.

Given saliency maps ``A`` of shape ``(N, C, h, w)`` the greedy search picks ``K`` windows
of ``window`` cells on the map:

1. each class channel is min-max normalised over its map, ``(a - min) / (max - min)`` in
   float32 (subtract first, then divide), and the channels are summed;
2. the criterion of a window is the average of that map over the window (stride 1,
   windows fully inside the map), computed as a direct per-window average in float64 so
   that exact ties stay exact;
3. the best window wins; on equal criteria the first in row-major order (smallest row,
   then smallest column); the window's cells are then set to 0 and the search repeats.
   Windows may overlap earlier picks; once everything left is 0 the pick is (0, 0).

Map positions convert to input pixels with ``round(row / h * H)`` (round half to even).

Deliberate difference from the reference: when a class channel is constant its
normalisation is 0/0; the reference then turns the whole map into NaN and returns (0, 0)
at every step. Here a constant channel is normalised to all zeros (it carries no
localisation information), so the other class still drives the search.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def normalized_criterion_map(saliency: Tensor) -> Tensor:
    """Per-class min-max normalised saliency summed over classes: ``(N, h, w)`` float32."""
    if saliency.dim() != 4:
        raise ValueError(f"saliency must be (N, C, h, w), got shape {tuple(saliency.shape)}")
    maps = saliency.float()
    flat = maps.flatten(2)
    low = flat.amin(dim=2)[:, :, None, None]
    high = flat.amax(dim=2)[:, :, None, None]
    span = high - low
    constant = span == 0
    normalized = (maps - low) / torch.where(constant, torch.ones_like(span), span)
    normalized = torch.where(constant, torch.zeros_like(normalized), normalized)
    return normalized.sum(dim=1)


def window_on_map(crop_shape: tuple[int, int], map_hw: tuple[int, int],
                  input_hw: tuple[int, int]) -> tuple[int, int]:
    """Size in map cells of a ``crop_shape`` crop: ``round(crop * h / H)``, at least 1."""
    return (
        max(1, round(crop_shape[0] * map_hw[0] / input_hw[0])),
        max(1, round(crop_shape[1] * map_hw[1] / input_hw[1])),
    )


def check_picks(window: tuple[int, int], map_shape: tuple[int, int], k: int) -> tuple[int, int]:
    """The window (rows, columns) when it fits the map and ``k`` is at least 1."""
    (wh, ww), (h, w) = window, map_shape
    if not (1 <= wh <= h and 1 <= ww <= w):
        raise ValueError(f"window {window} does not fit in a {h}x{w} saliency map")
    if k < 1:
        raise ValueError(f"K must be at least 1, got {k}")
    return wh, ww


def greedy_windows(criterion_map: Tensor, k: int, window: tuple[int, int]) -> Tensor:
    """Greedy non-maximum selection of ``k`` windows on ``(N, h, w)`` maps.

    Returns the upper-left ``(row, col)`` of each pick, ``(N, k, 2)`` int64, in pick order.
    """
    if criterion_map.dim() != 3:
        raise ValueError(f"criterion map must be (N, h, w), got {tuple(criterion_map.shape)}")
    _, h, w = criterion_map.shape
    wh, ww = check_picks(window, (h, w), k)
    device = criterion_map.device
    work = criterion_map.double()
    rows = torch.arange(h, device=device)
    cols = torch.arange(w, device=device)
    n_cols = w - ww + 1
    picks = []
    for _ in range(k):
        scores = F.avg_pool2d(work[:, None], (wh, ww), stride=1).flatten(1)
        best = scores.argmax(dim=1)  # the first maximal index: row-major tie-breaking
        top = torch.div(best, n_cols, rounding_mode="floor")
        left = best - top * n_cols
        picks.append(torch.stack((top, left), dim=1))
        in_rows = (rows[None, :] >= top[:, None]) & (rows[None, :] < top[:, None] + wh)
        in_cols = (cols[None, :] >= left[:, None]) & (cols[None, :] < left[:, None] + ww)
        work = work.masked_fill(in_rows[:, :, None] & in_cols[:, None, :], 0.0)
    return torch.stack(picks, dim=1).to(torch.int64)


def map_to_input(positions: Tensor, map_hw: tuple[int, int],
                 input_hw: tuple[int, int]) -> Tensor:
    """Convert map positions ``(..., 2)`` to input pixels, round half to even, int64."""
    cells = torch.tensor(map_hw, dtype=torch.float64, device=positions.device)
    pixels = torch.tensor(input_hw, dtype=torch.float64, device=positions.device)
    return torch.round(positions.double() / cells * pixels).to(torch.int64)


def retrieve_roi(saliency: Tensor, k: int, crop_shape: tuple[int, int],
                 input_hw: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """GMIC's retrieve_roi: ``(map_positions, input_positions)``, each ``(N, k, 2)`` int64.

    ``saliency`` is ``(N, C, h, w)``; crops of ``crop_shape`` input pixels correspond to a
    window of :func:`window_on_map` cells. Positions are upper-left corners ``(row, col)``.
    """
    map_hw = (int(saliency.shape[-2]), int(saliency.shape[-1]))
    window = window_on_map(crop_shape, map_hw, input_hw)
    with torch.autocast(device_type=saliency.device.type, enabled=False):
        positions = greedy_windows(normalized_criterion_map(saliency), k, window)
    return positions, map_to_input(positions, map_hw, input_hw)
