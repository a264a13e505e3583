"""From GlimpseNet's region map to its glimpses: candidate windows, non-maximum suppression.

Hang et al. §5.1: "The predicted mask is then processed with non-maximum suppression with
IoU threshold set to 0.5 to recover the top non-overlapping regions predicted by FCGN.
These regions are then cropped from the high-resolution image." The paper does not say
how boxes are drawn from a mask, how large they are or how many are kept; the choices here:

* candidates: every window of the glimpse's footprint on the map, at a stride of
  ``stride`` map cells (1: every position), fully inside the map. The footprint of a
  ``glimpse_shape`` crop of the model input is ``round(glimpse * map / input)`` cells per
  direction (at least 1), as GMIC's ROI window; a window at map cell ``(i, j)`` is the
  model-input box whose upper-left corner is ``round(i * H / h), round(j * W / w)``
  (round half to even), moved inside the input if needed; every box has the glimpse size;
* a candidate's score is the mean of the [0, 1] region confidence over its window;
* greedy NMS (:func:`nms`): candidates in decreasing score, equal scores in candidate
  order (row-major: upper rows first, then left columns: a stable sort); the best
  remaining one is kept and every remaining candidate whose IoU with it is greater than
  the threshold is dropped (IoU exactly at the threshold is kept, as in the Faster R-CNN
  snippet the paper adapts); until ``k`` are kept;
* boxes are half-open pixel ranges ``[top, bottom) x [left, right)`` with area
  ``(bottom - top) * (right - left)``, i.e. the inclusive-coordinate "+1" area of that
  snippet; IoU is computed in float64;
* no score threshold: the paper's Figure 3 mentions thresholding but gives no value, and
  a threshold would leave a normal view without glimpses; every view gets exactly ``k``
  glimpses, so the MIL bag has a fixed size. If NMS keeps fewer than ``k`` (a map with
  few windows), the bag is filled with the best suppressed candidates in score order.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from triage.errors import ModelError


def box_iou(box: Tensor, boxes: Tensor) -> Tensor:
    """IoU of one box ``(4,)`` with each of ``boxes`` ``(M, 4)`` (top, left, bottom, right),
    float64 ``(M,)``; boxes of zero area have IoU 0 with everything."""
    a = box.double()
    b = boxes.double()
    inter_h = (torch.minimum(a[2], b[:, 2]) - torch.maximum(a[0], b[:, 0])).clamp(min=0)
    inter_w = (torch.minimum(a[3], b[:, 3]) - torch.maximum(a[1], b[:, 1])).clamp(min=0)
    inter = inter_h * inter_w
    area_a = (a[2] - a[0]).clamp(min=0) * (a[3] - a[1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    union = area_a + area_b - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-300), torch.zeros_like(union))


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float = 0.5,
        max_keep: int | None = None) -> Tensor:
    """Greedy non-maximum suppression: indices of the kept boxes, best first (int64).

    ``boxes`` (M, 4) as (top, left, bottom, right), ``scores`` (M,). A box is dropped when
    its IoU with a kept, better box is greater than ``iou_threshold``. Equal scores keep
    the input order. At most ``max_keep`` indices (all survivors when None).
    """
    if boxes.dim() != 2 or boxes.shape[1] != 4 or scores.shape != boxes.shape[:1]:
        raise ValueError(f"boxes must be (M, 4) and scores (M,), got {tuple(boxes.shape)} "
                         f"and {tuple(scores.shape)}")
    if not 0 <= iou_threshold <= 1:
        raise ValueError(f"IoU threshold must be in [0, 1], got {iou_threshold}")
    limit = boxes.shape[0] if max_keep is None else min(max_keep, boxes.shape[0])
    order = torch.sort(scores, descending=True, stable=True).indices
    ordered = boxes[order]
    alive = torch.ones(order.shape[0], dtype=torch.bool, device=boxes.device)
    kept: list[Tensor] = []
    while len(kept) < limit and bool(alive.any()):
        first = torch.argmax(alive.to(torch.uint8))  # the best box still alive
        kept.append(order[first])
        alive &= box_iou(ordered[first], ordered) <= iou_threshold
        alive[first] = False
    if not kept:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    return torch.stack(kept).to(torch.int64)


class CandidateGrid(NamedTuple):
    """Candidate glimpses of one geometry: the window on the map (rows, cols), its stride,
    and the model-input box of every window position, row-major, ``(M, 4)`` int64."""

    window: tuple[int, int]
    stride: int
    boxes: Tensor


def candidate_grid(map_hw: tuple[int, int], input_hw: tuple[int, int],
                   glimpse_shape: tuple[int, int], stride: int,
                   device: torch.device | None = None) -> CandidateGrid:
    """Every glimpse-sized window on the map at ``stride`` cells, as model-input boxes."""
    (h, w), (height, width), (gh, gw) = map_hw, input_hw, glimpse_shape
    if gh > height or gw > width:
        raise ModelError(f"glimpse {glimpse_shape} is larger than the input {height}x{width}")
    if stride < 1:
        raise ModelError(f"candidate stride must be at least 1 map cell, got {stride}")
    wh = min(h, max(1, round(gh * h / height)))
    ww = min(w, max(1, round(gw * w / width)))
    rows = torch.arange(0, h - wh + 1, stride, device=device, dtype=torch.float64)
    cols = torch.arange(0, w - ww + 1, stride, device=device, dtype=torch.float64)
    tops = torch.round(rows * height / h).to(torch.int64).clamp(0, height - gh)
    lefts = torch.round(cols * width / w).to(torch.int64).clamp(0, width - gw)
    top, left = torch.meshgrid(tops, lefts, indexing="ij")
    boxes = torch.stack([top, left, top + gh, left + gw], dim=-1).reshape(-1, 4)
    return CandidateGrid((wh, ww), stride, boxes)


def window_scores(confidence: Tensor, grid: CandidateGrid) -> Tensor:
    """Mean confidence of every candidate window: ``(N, h, w) -> (N, M)`` float32.

    From a summed-area table (float64 prefix sums, then four look-ups per window), so the
    cost does not grow with the window: ``avg_pool2d`` summed every cell of every window,
    which at small maps with large glimpse windows dominated the member's time."""
    (win_h, win_w), st_h, st_w = grid.window, grid.stride, grid.stride
    table = F.pad(confidence.double().cumsum(1).cumsum(2), (1, 0, 1, 0))  # (N, h+1, w+1)
    rows = torch.arange(0, table.shape[1] - win_h, st_h, device=table.device)
    cols = torch.arange(0, table.shape[2] - win_w, st_w, device=table.device)
    r0, c0 = rows[:, None], cols[None, :]
    sums = (table[:, r0 + win_h, c0 + win_w] - table[:, r0, c0 + win_w]
            - table[:, r0 + win_h, c0] + table[:, r0, c0])
    return (sums / (win_h * win_w)).float().flatten(1)


def select_glimpses(confidence: Tensor, grid: CandidateGrid, k: int,
                    iou_threshold: float = 0.5) -> tuple[Tensor, Tensor]:
    """The ``k`` glimpses of each map: boxes ``(N, k, 4)`` int64 (best first) and their
    scores ``(N, k)``; filled with suppressed candidates when NMS keeps fewer than ``k``."""
    count = grid.boxes.shape[0]
    if not 1 <= k <= count:
        raise ModelError(f"{k} glimpses requested but the map has {count} candidate windows")
    scores = window_scores(confidence, grid)
    if scores.shape[1] != count:
        raise ModelError(f"candidate grid of {count} windows does not fit a map of shape "
                         f"{tuple(confidence.shape[1:])}")
    picks = []
    for view_scores in scores:
        kept = nms(grid.boxes, view_scores, iou_threshold, k)
        if kept.shape[0] < k:
            order = torch.sort(view_scores, descending=True, stable=True).indices
            rest = order[~torch.isin(order, kept)]
            kept = torch.cat([kept, rest[: k - kept.shape[0]]])
        picks.append(kept)
    index = torch.stack(picks)  # (N, k)
    return grid.boxes[index], torch.gather(scores, 1, index)
