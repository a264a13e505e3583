"""3D-GMIC's greedy ROI + slice retrieval against the reference outputs in retrieve_roi_3d.npz."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from triage.models.roi import window_on_map
from triage.models.roi3d import (
    greedy_windows_3d,
    retrieve_roi_3d,
    retrieve_roi_from_3d_image,
    volume_criterion_map,
)


@pytest.fixture(scope="module")
def roi_ref(fixtures_dir: Path) -> dict[str, np.ndarray]:
    with np.load(fixtures_dir / "retrieve_roi_3d.npz") as data:
        return {k: data[k] for k in data.files}


def _hw(values: np.ndarray) -> tuple[int, int]:
    return int(values[0]), int(values[1])


def _cases(roi_ref: dict[str, np.ndarray]) -> list[tuple[int, int, int]]:
    return [(case, int(k), int(z)) for case in range(int(roi_ref["num_volumes"]))
            for k in roi_ref["K_values"] for z in roi_ref["zeta_values"]]


def _brute_force_3d(criterion: np.ndarray, k: int, window: tuple[int, int],
                    zeta: int) -> tuple[list[int], list[tuple[int, int]]]:
    """Independent float64 loops: per-slice first best window in row-major order, then the
    first slice with the largest value, then zeroing within ±zeta slices."""
    work = criterion.astype(np.float64).copy()
    d, h, w = work.shape
    slices, picks = [], []
    for _ in range(k):
        best_slice, best_value, best_pos = 0, -np.inf, (0, 0)
        for s in range(d):
            value_s, pos_s = -np.inf, (0, 0)
            for r in range(h - window[0] + 1):
                for c in range(w - window[1] + 1):
                    value = work[s, r:r + window[0], c:c + window[1]].sum()
                    if value > value_s:
                        value_s, pos_s = value, (r, c)
            if value_s > best_value:
                best_slice, best_value, best_pos = s, value_s, pos_s
        slices.append(best_slice)
        picks.append(best_pos)
        low, high = max(0, best_slice - zeta), min(d, best_slice + zeta + 1)
        work[low:high, best_pos[0]:best_pos[0] + window[0], best_pos[1]:best_pos[1] + window[1]] = 0
    return slices, picks


def test_fixture_covers_every_case_k_and_zeta(roi_ref: dict[str, np.ndarray]) -> None:
    cases = _cases(roi_ref)
    assert len(cases) == len(roi_ref["num_slices"]) * 3 * 4
    for case, k, z in cases:
        assert f"case{case:02d}_K{k}_zeta{z}_slices" in roi_ref


def test_every_case_k_and_zeta_equals_reference(roi_ref: dict[str, np.ndarray]) -> None:
    crop, input_hw = _hw(roi_ref["crop_shape"]), _hw(roi_ref["input_hw"])
    mismatches = []
    for case, k, z in _cases(roi_ref):
        saliency = torch.from_numpy(roi_ref[f"case{case:02d}_saliency"])
        assert saliency.shape[0] == roi_ref["num_slices"][case]
        out = retrieve_roi_from_3d_image(saliency, k, crop, input_hw, zeta=z)
        prefix = f"case{case:02d}_K{k}_zeta{z}_"
        for ours, theirs in [(out.slices, "slices"), (out.cam_positions, "cam_positions"),
                             (out.patch_locations, "patch_locations"),
                             (out.cam_positions_all_slices, "cam_positions_all_slices")]:
            assert ours.dtype == torch.int64
            if not np.array_equal(ours.numpy(), roi_ref[prefix + theirs]):
                mismatches.append((prefix + theirs, str(roi_ref["case_kind"][case])))
    assert mismatches == []


def test_picks_are_the_winning_slices_own_windows(roi_ref: dict[str, np.ndarray]) -> None:
    saliency = torch.from_numpy(roi_ref["case00_saliency"])
    out = retrieve_roi_3d(saliency, 16, _hw(roi_ref["crop_shape"]), _hw(roi_ref["input_hw"]),
                          zeta=2)
    steps = torch.arange(16)
    assert torch.equal(out.cam_positions, out.cam_positions_all_slices[out.slices, steps])
    assert torch.equal(out.patch_locations, out.patch_locations_all_slices[out.slices, steps])


def test_window_on_map_equals_reference_window(roi_ref: dict[str, np.ndarray]) -> None:
    window = window_on_map(_hw(roi_ref["crop_shape"]), _hw(roi_ref["cam_hw"]),
                           _hw(roi_ref["input_hw"]))
    assert window == _hw(roi_ref["window_on_cam"])


@pytest.mark.parametrize("kind", ["tie_identical_slices", "tie_identical_blocks", "plateau"])
def test_designed_ties_follow_row_major_then_lowest_slice(roi_ref: dict[str, np.ndarray],
                                                          kind: str) -> None:
    cases = [i for i, name in enumerate(roi_ref["case_kind"]) if name == kind]
    assert cases, f"fixture has no {kind} case"
    window = _hw(roi_ref["window_on_cam"])
    case = cases[0]
    criterion = volume_criterion_map(torch.from_numpy(roi_ref[f"case{case:02d}_saliency"]))
    for zeta in (0, 10):
        slices, picks = greedy_windows_3d(criterion, 8, window, zeta)
        chosen = picks[slices, torch.arange(8)]
        expected_slices, expected_picks = _brute_force_3d(criterion.numpy(), 8, window, zeta)
        assert slices.tolist() == expected_slices
        assert [tuple(p) for p in chosen.tolist()] == expected_picks
        assert slices.tolist() == roi_ref[f"case{case:02d}_K8_zeta{zeta}_slices"].tolist()


def test_zeta_zero_erases_the_window_from_the_chosen_slice_only() -> None:
    # two identical slices with one bright block: zeta 0 picks it in both, zeta 1 once
    saliency = torch.zeros(2, 2, 8, 8)
    saliency[:, :, 2:6, 2:6] = 1.0
    saliency[:, :, 0, 7] = 0.5
    zero = retrieve_roi_3d(saliency, 2, (64, 64), (128, 128), zeta=0)
    one = retrieve_roi_3d(saliency, 2, (64, 64), (128, 128), zeta=1)
    assert zero.slices.tolist() == [0, 1]
    assert zero.cam_positions.tolist() == [[2, 2], [2, 2]]
    assert one.slices.tolist()[0] == 0 and one.cam_positions.tolist()[1] != [2, 2]


def test_zero_class_is_ignored_instead_of_poisoning_the_volume(
        roi_ref: dict[str, np.ndarray]) -> None:
    """Deliberate difference: the reference gets 0/0 = NaN and slice 0, (0, 0) every step."""
    saliency = roi_ref["degenerate_zero_class_saliency"]
    zero_classes = [c for c in range(saliency.shape[1]) if not saliency[:, c].any()]
    assert len(zero_classes) == 1
    other = saliency[:, 1 - zero_classes[0]].astype(np.float32)
    normalised = (other - other.min()) / (other.max() - other.min())
    window = _hw(roi_ref["window_on_cam"])
    out = retrieve_roi_3d(torch.from_numpy(saliency), 8, _hw(roi_ref["crop_shape"]),
                          _hw(roi_ref["input_hw"]), zeta=10)
    expected_slices, expected_picks = _brute_force_3d(normalised, 8, window, 10)
    assert out.slices.tolist() == expected_slices
    assert [tuple(p) for p in out.cam_positions.tolist()] == expected_picks
    quirk = (roi_ref["degenerate_zero_class_K8_zeta10_slices"],
             roi_ref["degenerate_zero_class_K8_zeta10_cam_positions"])
    assert not (np.array_equal(out.slices.numpy(), quirk[0])
                and np.array_equal(out.cam_positions.numpy(), quirk[1]))


def test_criterion_is_normalised_over_all_slices_together() -> None:
    saliency = torch.zeros(2, 1, 4, 4)
    saliency[0, 0, 0, 0] = 2.0
    saliency[1, 0, 3, 3] = 1.0
    criterion = volume_criterion_map(saliency)
    assert float(criterion[0, 0, 0]) == 1.0
    assert float(criterion[1, 3, 3]) == 0.5  # per-slice normalisation would give 1.0


@pytest.mark.parametrize("bad,match", [
    (dict(k=0), "K must"), (dict(zeta=-1), "zeta must"), (dict(window=(5, 4)), "does not fit"),
])
def test_invalid_arguments_are_refused(bad: dict, match: str) -> None:
    args = dict(k=2, window=(4, 4), zeta=1) | bad
    with pytest.raises(ValueError, match=match):
        greedy_windows_3d(torch.rand(3, 4, 4), **args)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_retrieve_roi_3d_on_cuda_equals_reference(roi_ref: dict[str, np.ndarray]) -> None:
    for case, k, z in _cases(roi_ref):
        saliency = torch.from_numpy(roi_ref[f"case{case:02d}_saliency"]).cuda()
        out = retrieve_roi_3d(saliency, k, _hw(roi_ref["crop_shape"]), _hw(roi_ref["input_hw"]),
                              zeta=z)
        prefix = f"case{case:02d}_K{k}_zeta{z}_"
        assert np.array_equal(out.slices.cpu().numpy(), roi_ref[prefix + "slices"])
        assert np.array_equal(out.cam_positions.cpu().numpy(), roi_ref[prefix + "cam_positions"])
