"""GMIC's greedy ROI retrieval against the reference outputs in retrieve_roi_2d.npz."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from triage.models.roi import (
    greedy_windows,
    map_to_input,
    normalized_criterion_map,
    retrieve_roi,
    window_on_map,
)


@pytest.fixture(scope="module")
def roi_ref(fixtures_dir: Path) -> dict[str, np.ndarray]:
    with np.load(fixtures_dir / "retrieve_roi_2d.npz") as data:
        return {k: data[k] for k in data.files}


def _hw(values: np.ndarray) -> tuple[int, int]:
    return int(values[0]), int(values[1])


def _brute_force_greedy(criterion: np.ndarray, k: int, window: tuple[int, int]) -> np.ndarray:
    """Independent float64 loop: window sums, first maximum in row-major order, zeroing."""
    work = criterion.astype(np.float64).copy()
    h, w = work.shape
    picks = []
    for _ in range(k):
        best, best_pos = -np.inf, (0, 0)
        for r in range(h - window[0] + 1):
            for c in range(w - window[1] + 1):
                value = work[r:r + window[0], c:c + window[1]].sum()
                if value > best:
                    best, best_pos = value, (r, c)
        picks.append(best_pos)
        work[best_pos[0]:best_pos[0] + window[0], best_pos[1]:best_pos[1] + window[1]] = 0
    return np.array(picks)


@pytest.mark.parametrize("k", [3, 6, 10])
def test_cam_positions_and_patch_locations_equal_reference_for_every_case(
        roi_ref: dict[str, np.ndarray], k: int) -> None:
    saliency = torch.from_numpy(roi_ref["saliency"])
    cam, pixels = retrieve_roi(saliency, k, _hw(roi_ref["crop_shape"]), _hw(roi_ref["input_hw"]))
    for i, kind in enumerate(roi_ref["case_kind"]):
        assert np.array_equal(cam[i].numpy(), roi_ref[f"cam_positions_K{k}"][i]), (i, kind)
        assert np.array_equal(pixels[i].numpy(), roi_ref[f"patch_locations_K{k}"][i]), (i, kind)
    assert cam.dtype == torch.int64 and pixels.dtype == torch.int64


def test_window_on_map_equals_reference_window(roi_ref: dict[str, np.ndarray]) -> None:
    window = window_on_map(_hw(roi_ref["crop_shape"]), _hw(roi_ref["cam_hw"]),
                           _hw(roi_ref["input_hw"]))
    assert window == _hw(roi_ref["window_on_cam"])


def test_normalized_criterion_equals_reference_map(roi_ref: dict[str, np.ndarray]) -> None:
    ours = normalized_criterion_map(torch.from_numpy(roi_ref["saliency"])).numpy()
    np.testing.assert_allclose(ours, roi_ref["normalized_sum"], atol=1e-6, rtol=0)


def test_designed_ties_go_to_the_first_window_in_row_major_order(
        roi_ref: dict[str, np.ndarray]) -> None:
    window = _hw(roi_ref["window_on_cam"])
    tie_cases = [i for i, kind in enumerate(roi_ref["case_kind"]) if str(kind).startswith("tie")]
    assert tie_cases, "fixture has no designed tie cases"
    criterion = normalized_criterion_map(torch.from_numpy(roi_ref["saliency"][tie_cases]))
    ours = greedy_windows(criterion, 10, window).numpy()
    for j, case in enumerate(tie_cases):
        expected = _brute_force_greedy(criterion[j].numpy(), 10, window)
        assert np.array_equal(ours[j], expected)
        assert np.array_equal(ours[j], roi_ref["cam_positions_K10"][case])


def test_constant_channel_is_ignored_instead_of_poisoning_the_map(
        roi_ref: dict[str, np.ndarray]) -> None:
    """Deliberate difference: the reference gets NaN and (0, 0) at every step."""
    saliency = roi_ref["degenerate_constant_channel_saliency"]
    constant = [c for c in range(saliency.shape[0]) if np.ptp(saliency[c]) == 0]
    assert len(constant) == 1
    other = saliency[1 - constant[0]]
    window = _hw(roi_ref["window_on_cam"])
    cam, _ = retrieve_roi(torch.from_numpy(saliency)[None], 6, _hw(roi_ref["crop_shape"]),
                          _hw(roi_ref["input_hw"]))
    normalised_other = (other - other.min()) / (other.max() - other.min())
    expected = _brute_force_greedy(normalised_other, 6, window)
    assert np.array_equal(cam[0].numpy(), expected)
    assert not np.array_equal(cam[0].numpy(), roi_ref["degenerate_constant_channel_cam_positions_K6"])


def test_map_to_input_rounds_half_to_even_like_numpy_around() -> None:
    # on a 24-row map of a 1481-row input, row 12 lands exactly on 740.5
    rows = np.arange(24)
    positions = torch.from_numpy(np.stack([rows, rows], axis=1))[None]
    ours = map_to_input(positions, (24, 15), (1481, 937))[0].numpy()
    assert np.array_equal(ours[:, 0], np.around(rows / 24 * 1481).astype(np.int64))
    assert np.array_equal(ours[:, 1], np.around(rows / 15 * 937).astype(np.int64))
    assert (rows / 24 * 1481)[12] % 1 == 0.5 and ours[12, 0] % 2 == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_retrieve_roi_on_cuda_equals_reference(roi_ref: dict[str, np.ndarray]) -> None:
    saliency = torch.from_numpy(roi_ref["saliency"]).cuda()
    cam, _ = retrieve_roi(saliency, 10, _hw(roi_ref["crop_shape"]), _hw(roi_ref["input_hw"]))
    assert np.array_equal(cam.cpu().numpy(), roi_ref["cam_positions_K10"])
