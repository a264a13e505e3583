"""GlimpseNet's region proposals: greedy NMS at IoU 0.5 against hand-computed boxes, the
candidate windows a map gives, and the fixed-size bag of glimpses."""

from __future__ import annotations

import pytest
import torch

from triage.errors import ModelError
from triage.models.glimpses import (
    box_iou,
    candidate_grid,
    nms,
    select_glimpses,
    window_scores,
)

# (top, left, bottom, right), half-open; areas: A 100, B 200, C 190, D 100, E 100, F 100
A, B, C, D = (0, 0, 10, 10), (0, 0, 10, 20), (0, 0, 10, 19), (1, 6, 11, 16)
E, F = (20, 20, 30, 30), (21, 21, 31, 31)


def _boxes(*boxes: tuple[int, int, int, int]) -> torch.Tensor:
    return torch.tensor(boxes, dtype=torch.int64)


def test_iou_of_hand_computed_pairs() -> None:
    ious = box_iou(torch.tensor(A), _boxes(A, B, C, D, E))
    # A∩B = 100, A∪B = 200; A∩C = 100, A∪C = 190; A∩D = 9*4 = 36, A∪D = 164; disjoint
    assert ious.tolist() == pytest.approx([1.0, 0.5, 100 / 190, 36 / 164, 0.0], abs=1e-15)
    assert box_iou(torch.tensor(B), _boxes(D)).item() == pytest.approx(90 / 210, abs=1e-15)
    assert box_iou(torch.tensor(E), _boxes(F)).item() == pytest.approx(81 / 119, abs=1e-15)


def test_nms_keeps_the_best_and_drops_overlaps_above_one_half_in_score_order() -> None:
    boxes = _boxes(A, B, C, D, E, F)
    scores = torch.tensor([0.9, 0.8, 0.85, 0.7, 0.95, 0.95])
    # E (0.95) first; F ties with E but comes later and overlaps it by 0.68: dropped;
    # A; C overlaps A by 0.526 > 0.5: dropped; B overlaps A by exactly 0.5: kept; D
    # overlaps A by 0.22 and B by 0.43: kept
    assert nms(boxes, scores, 0.5).tolist() == [4, 0, 1, 3]
    assert nms(boxes, scores, 0.5, max_keep=2).tolist() == [4, 0]
    # a stricter threshold also drops B (0.5 > 0.4)
    assert nms(boxes, scores, 0.4).tolist() == [4, 0, 3]


def test_nms_ties_keep_the_input_order() -> None:
    scores = torch.tensor([0.95, 0.95])
    assert nms(_boxes(E, F), scores, 0.5).tolist() == [0]
    assert nms(_boxes(F, E), scores, 0.5).tolist() == [0]
    assert nms(_boxes(A, E), torch.tensor([0.5, 0.5]), 0.5).tolist() == [0, 1]


def test_nms_of_nothing_is_nothing_and_bad_shapes_are_refused() -> None:
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).tolist() == []
    with pytest.raises(ValueError, match=r"\(M, 4\)"):
        nms(torch.zeros(3, 3), torch.zeros(3), 0.5)
    with pytest.raises(ValueError, match="IoU threshold"):
        nms(_boxes(A), torch.zeros(1), 1.5)


def test_candidate_windows_are_glimpse_sized_input_boxes_on_the_map_grid() -> None:
    # 8x8 map of a 64x48 input, 16x16 glimpses: the window is round(16*8/64) = 2 rows by
    # round(16*8/48) = 3 columns; stride 2 gives rows 0,2,4,6 and columns 0,2,4, i.e.
    # input tops 0,16,32,48 and lefts 0,12,24
    grid = candidate_grid((8, 8), (64, 48), (16, 16), stride=2)
    assert grid.window == (2, 3)
    assert grid.boxes.shape == (12, 4)
    assert grid.boxes[:4].tolist() == [[0, 0, 16, 16], [0, 12, 16, 28], [0, 24, 16, 40],
                                       [16, 0, 32, 16]]
    assert grid.boxes[-1].tolist() == [48, 24, 64, 40]
    # the window scores line up with the boxes (row-major)
    conf = torch.zeros(1, 8, 8)
    conf[0, 4, 2:5] = 1.0  # row 4, columns 2..4: exactly the window at (4, 2)
    scores = window_scores(conf, grid)
    assert scores.shape == (1, 12)
    assert int(scores.argmax()) == 2 * 3 + 1 and scores.max().item() == pytest.approx(0.5)


def test_a_glimpse_larger_than_the_input_or_a_zero_stride_is_refused() -> None:
    with pytest.raises(ModelError, match="larger than the input"):
        candidate_grid((8, 8), (64, 48), (16, 64), stride=1)
    with pytest.raises(ModelError, match="stride"):
        candidate_grid((8, 8), (64, 48), (16, 16), stride=0)


def test_glimpses_follow_the_bright_regions_without_overlapping_above_one_half() -> None:
    conf = torch.zeros(2, 16, 16)
    conf[0, 2:4, 2:4] = 1.0
    conf[0, 10:12, 12:14] = 0.6
    conf[1, 12:14, 0:2] = 0.8
    grid = candidate_grid((16, 16), (128, 128), (16, 16), stride=1)  # 2x2 windows
    boxes, scores = select_glimpses(conf, grid, k=3)
    assert boxes.shape == (2, 3, 4) and scores.shape == (2, 3)
    assert boxes[0, 0].tolist() == [16, 16, 32, 32] and scores[0, 0].item() == 1.0
    assert boxes[0, 1].tolist() == [80, 96, 96, 112] and scores[0, 1].item() == pytest.approx(0.6)
    # then a window one cell above the first block: half of it (0.5), IoU 1/3 with it
    assert boxes[0, 2].tolist() == [8, 16, 24, 32] and scores[0, 2].item() == 0.5
    assert boxes[1, 0].tolist() == [96, 0, 112, 16] and scores[1, 0].item() == pytest.approx(0.8)
    for view in boxes:
        for i in range(3):
            assert (box_iou(view[i], view[i + 1:]) <= 0.5).all()
    assert (scores[:, :-1] >= scores[:, 1:]).all()


def test_the_bag_is_filled_with_suppressed_candidates_when_nms_keeps_too_few() -> None:
    # 28x28 glimpses of a 32x32 input: four candidates, every pair overlaps by > 0.5
    grid = candidate_grid((8, 8), (32, 32), (28, 28), stride=1)
    assert grid.boxes.tolist() == [[0, 0, 28, 28], [0, 4, 28, 32], [4, 0, 32, 28],
                                   [4, 4, 32, 32]]
    conf = torch.zeros(1, 8, 8)
    conf[0, 7, 7] = 1.0  # only the last window sees it
    conf[0, 7, 0] = 0.5  # the two lower windows see it
    boxes, scores = select_glimpses(conf, grid, k=3)
    assert nms(grid.boxes, window_scores(conf, grid)[0], 0.5).tolist() == [3]
    assert boxes[0].tolist() == [[4, 4, 32, 32], [4, 0, 32, 28], [0, 0, 28, 28]]
    assert scores[0].tolist() == pytest.approx([1 / 49, 0.5 / 49, 0.0])
    with pytest.raises(ModelError, match="5 glimpses requested"):
        select_glimpses(conf, grid, k=5)


def test_window_scores_from_the_summed_area_table_equal_the_window_means() -> None:
    """The summed-area table gives each candidate window's mean, as averaging its cells does."""
    import torch
    import torch.nn.functional as F

    from triage.models.glimpses import candidate_grid, window_scores

    conf = torch.rand(2, 40, 30, generator=torch.Generator().manual_seed(0))
    grid = candidate_grid((40, 30), (400, 300), (120, 90), 2)
    direct = F.avg_pool2d(conf[:, None], grid.window, stride=grid.stride).flatten(1)
    assert torch.allclose(window_scores(conf, grid), direct, atol=1e-5)
