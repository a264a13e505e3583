"""DBT volumes: slice order, laterality/view, slabs, series choice and the 3D-GMIC input."""

from __future__ import annotations

import copy
import io
import json
import logging
import tracemalloc
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

import triage.imaging.volume as volume_module
from triage.errors import PreprocessingError
from triage.imaging.prepare import prepare_view
from triage.imaging.volume import (
    choose_dbt_series,
    iter_slices,
    prepare_volume,
    read_volume_frames,
)
from triage.synthetic import (
    DbtViewSpec,
    ExamSpec,
    build_dbt_view,
    dbt_view_specs,
    render_breast,
    study_identity_for_seed,
)
from triage.synthetic.views import MammoView
from triage.vocabulary import Laterality, View

WHEN = datetime(2024, 6, 1, 8, 15).astimezone()
STUDY = study_identity_for_seed(31, WHEN)
SLICES = 8
MATRIX = (480, 384)  # the reference cropping erodes 100 px: the breast must be wider


def reread(ds: Dataset) -> Dataset:
    """The dataset as a receiver would see it: written and read back."""
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    buffer.seek(0)
    return pydicom.dcmread(buffer)


def dbt(**fields: Any) -> Dataset:
    spec = DbtViewSpec(study=STUDY, laterality=Laterality.RIGHT, view=MammoView.CC, seed=2,
                       matrix=MATRIX, slices=SLICES)
    return reread(build_dbt_view(replace(spec, **fields)))


def lesion_spec(**fields: Any) -> DbtViewSpec:
    specs = dbt_view_specs(ExamSpec(seed=4, lesion=True, matrix=MATRIX, study_datetime=WHEN),
                           slices=SLICES)
    spec = next(s for s in specs if s.lesion is not None)
    return replace(spec, **fields)


def stored_frames(ds: Dataset) -> np.ndarray:
    return np.asarray(ds.pixel_array, dtype=np.float32).reshape(
        int(ds.NumberOfFrames), ds.Rows, ds.Columns)


# ---------------------------------------------------------------------------- header
def test_slice_order_is_recovered_when_frames_are_stored_in_reverse() -> None:
    forward, backward = dbt(), dbt(reversed_storage=True)
    info_f, info_b = read_volume_frames(forward), read_volume_frames(backward)
    assert info_f.order == tuple(range(SLICES))
    assert info_b.order == tuple(reversed(range(SLICES)))
    assert info_b.order_source == "plane_position"
    assert info_b.slice_spacing_mm == pytest.approx(1.0)
    slices_f = [s.pixels.array for s in iter_slices(forward, info_f)]
    slices_b = [s.pixels.array for s in iter_slices(backward, info_b)]
    assert all(np.array_equal(a, b) for a, b in zip(slices_f, slices_b, strict=True))


def test_without_positions_in_stack_numbers_then_stored_order_are_used(
        caplog: pytest.LogCaptureFixture) -> None:
    ds = dbt(reversed_storage=True)
    for group in ds.PerFrameFunctionalGroupsSequence:
        del group.PlanePositionSequence
    info = read_volume_frames(ds)
    assert (info.order_source, info.order) == ("in_stack_position",
                                               tuple(reversed(range(SLICES))))
    for group in ds.PerFrameFunctionalGroupsSequence:
        del group.FrameContentSequence[0].InStackPositionNumber
    with caplog.at_level(logging.WARNING, logger="triage.imaging.volume"):
        info = read_volume_frames(ds)
    assert (info.order_source, info.order) == ("stored", tuple(range(SLICES)))
    assert "stored order" in caplog.text


def test_laterality_and_view_come_from_the_functional_groups_when_the_top_level_lacks_them(
) -> None:
    ds = dbt(view=MammoView.MLO)
    assert "ImageLaterality" not in ds and "Laterality" not in ds
    info = read_volume_frames(ds)
    assert (info.laterality, info.laterality_source) == (
        Laterality.RIGHT, "FrameLaterality (shared functional groups)")
    assert (info.view, info.view_source) == (View.MLO, "ViewCodeSequence")

    # per-frame Frame Anatomy, View Code Sequence only inside a functional group
    shared = ds.SharedFunctionalGroupsSequence[0]
    anatomy = shared.FrameAnatomySequence
    del shared.FrameAnatomySequence
    for group in ds.PerFrameFunctionalGroupsSequence:
        group.FrameAnatomySequence = copy.deepcopy(anatomy)
    anatomy[0].ViewCodeSequence = ds.ViewCodeSequence
    shared.FrameAnatomySequence = Sequence([anatomy[0]])
    del shared.FrameAnatomySequence[0].FrameLaterality
    del ds.ViewCodeSequence
    info = read_volume_frames(ds)
    assert (info.laterality, info.laterality_source) == (
        Laterality.RIGHT, "FrameLaterality (per-frame functional groups)")
    assert (info.view, info.view_source) == (
        View.MLO, "ViewCodeSequence (shared functional groups)")


def test_image_laterality_when_present_is_read_first() -> None:
    info = read_volume_frames(dbt(image_laterality=True))
    assert (info.laterality, info.laterality_source) == (Laterality.RIGHT, "ImageLaterality")


def test_orientation_letters_follow_the_hanging_convention() -> None:
    assert read_volume_frames(dbt()).patient_orientation == ("P", "L")
    assert read_volume_frames(dbt(laterality=Laterality.LEFT)).patient_orientation == ("A", "R")


def _thin_without_marks() -> Dataset:
    """A thin-slice object whose slab markers a test then sets one by one."""
    return dbt(slices=12)


@pytest.mark.parametrize("mark", ["slab_series", "image_type", "description", "spacing"])
def test_slabs_are_detected_from_each_marker(mark: str) -> None:
    if mark == "slab_series":
        ds = dbt(slices=12, slab_thickness_mm=6.0)
        expected = "SliceThickness 6 mm"
    else:
        ds = _thin_without_marks()
        if mark == "image_type":
            ds.ImageType = ["DERIVED", "PRIMARY", "TOMOSYNTHESIS", "MAXIMUM"]
            expected = "MAXIMUM"
        elif mark == "description":
            ds.SeriesDescription = "Tomo 10mm SLABS"
            expected = "slab"
        else:  # frames 3 mm apart, nothing else says so
            for index, group in enumerate(ds.PerFrameFunctionalGroupsSequence):
                position = [float(v) for v in group.PlanePositionSequence[0].ImagePositionPatient]
                group.PlanePositionSequence[0].ImagePositionPatient = [
                    position[0], position[1], position[2] - 2.0 * index]
            expected = "3 mm apart"
    info = read_volume_frames(ds)
    assert info.is_slab
    assert info.slab_reason is not None and expected in info.slab_reason


def test_thin_slices_are_not_slabs() -> None:
    info = read_volume_frames(_thin_without_marks())
    assert (info.is_slab, info.slab_reason) == (False, None)


def test_chosen_series_prefers_1mm_slices_over_slabs_for_each_view() -> None:
    candidates = []
    for laterality in Laterality:
        for view in (MammoView.CC, MammoView.MLO):
            for slab in (None, 6.0, 10.0):
                candidates.append(read_volume_frames(dbt(
                    laterality=laterality, view=view, slices=12, slab_thickness_mm=slab,
                    series_number=3 if slab is None else 4)))
    for order in (candidates, candidates[::-1]):
        chosen = choose_dbt_series(order)
        assert set(chosen) == {(lat, v) for lat in Laterality for v in View}
        assert all(not info.is_slab and info.slice_spacing_mm == pytest.approx(1.0)
                   for info in chosen.values())

    only_slabs = [c for c in candidates if c.is_slab]
    chosen = choose_dbt_series(only_slabs)
    assert len(chosen) == 4
    # the thinner slab wins: 6 mm slabs step 3 mm, 10 mm slabs step 5 mm
    assert all(info.slice_spacing_mm == pytest.approx(3.0) for info in chosen.values())


def test_objects_without_laterality_are_left_out_of_the_choice() -> None:
    ds = dbt()
    del ds.SharedFunctionalGroupsSequence[0].FrameAnatomySequence[0].FrameLaterality
    assert choose_dbt_series([read_volume_frames(ds)]) == {}
    with pytest.raises(PreprocessingError, match="laterality unreadable"):
        prepare_volume(ds, (256, 192))


# ---------------------------------------------------------------------------- pixels
def test_slices_are_decoded_one_frame_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    ds = dbt(reversed_storage=True)
    decoded: list[int | None] = []
    original = volume_module.decode_pixels

    def counting(dataset: Dataset, *, frame: int | None = None,  # type: ignore[no-untyped-def]
                 pixels_from: Any = None):
        decoded.append(frame)
        return original(dataset, frame=frame, pixels_from=pixels_from)

    monkeypatch.setattr(volume_module, "decode_pixels", counting)
    slices = iter_slices(ds)
    first = next(slices)
    assert decoded == [SLICES - 1] and (first.index, first.frame) == (0, SLICES - 1)
    assert first.pixels.array.shape == MATRIX
    rest = list(slices)
    assert decoded == list(reversed(range(SLICES))) and len(rest) == SLICES - 1


def test_prepared_volume_has_the_model_slice_size_and_the_lesion_maps_back() -> None:
    spec = lesion_spec(reversed_storage=True)
    assert spec.lesion is not None
    spec = replace(spec, lesion=replace(spec.lesion, lesion=replace(spec.lesion.lesion,
                                                                   contrast=0.1)))
    with_lesion = prepare_volume(reread(build_dbt_view(spec)))
    assert with_lesion.array.shape == (SLICES, 2116, 1339)
    assert with_lesion.array.dtype == np.float32
    without = prepare_volume(reread(build_dbt_view(replace(spec, lesion=None))))
    assert without.frame == with_lesion.frame

    # undo the standardisation of each and compare: only the lesion differs
    gain = with_lesion.array
    gain *= np.float32(with_lesion.std)
    gain += np.float32(with_lesion.mean)
    base = without.array
    base *= np.float32(without.std)
    base += np.float32(without.mean)
    gain -= base
    del base
    slice_index, row, col = np.unravel_index(int(np.argmax(gain)), gain.shape)
    assert with_lesion.frame_indices[slice_index] == SLICES - 1 - spec.lesion.center_slice
    assert slice_index == spec.lesion.center_slice  # slice order = anatomical order
    source = with_lesion.frame.to_source(float(row), float(col))
    drawn = spec.lesion.lesion.center
    assert abs(source[0] - drawn[0]) <= 2 and abs(source[1] - drawn[1]) <= 2


@pytest.mark.parametrize("laterality", list(Laterality))
def test_every_input_pixel_is_the_standardised_source_pixel_it_maps_to(
        laterality: Laterality) -> None:
    ds = dbt(laterality=laterality, view=MammoView.MLO, reversed_storage=True)
    prepared = prepare_volume(ds, (512, 320))
    assert prepared.flipped is (laterality is Laterality.RIGHT)
    frames = stored_frames(ds)
    raw = prepared.array * np.float32(prepared.std) + np.float32(prepared.mean)
    top, bottom, left, right = prepared.crop_window
    rng = np.random.default_rng(1)
    for d, r, c in zip(rng.integers(0, SLICES, 3000), rng.integers(0, 512, 3000),
                       rng.integers(0, 320, 3000), strict=True):
        sr, sc = prepared.frame.to_source(float(r), float(c))
        inside = top <= sr < bottom and left <= sc < right
        expected = frames[prepared.frame_indices[d], int(sr), int(sc)] if inside else 0.0
        assert raw[d, r, c] == pytest.approx(expected, abs=2e-3)


def test_volume_is_standardised_as_a_whole_and_optionally_per_slice() -> None:
    ds = dbt(seed=6)
    whole = prepare_volume(ds, (512, 320))
    assert float(whole.array.mean(dtype=np.float64)) == pytest.approx(0.0, abs=1e-5)
    assert float(whole.array.std(dtype=np.float64)) == pytest.approx(1.0, abs=1e-5)
    means = whole.array.mean(axis=(1, 2))
    assert float(means.max() - means.min()) > 1e-3  # slices keep their own brightness
    minima = whole.array.min(axis=(1, 2))
    assert np.all(minima == minima[0])  # one background value throughout

    per_slice = prepare_volume(ds, (512, 320), standardization="slice")
    assert np.allclose(per_slice.array.mean(axis=(1, 2)), 0.0, atol=1e-5)
    assert np.allclose(per_slice.array.std(axis=(1, 2)), 1.0, atol=1e-5)


def test_one_slice_volume_is_prepared_like_a_2d_view() -> None:
    ds = dbt(slices=1, laterality=Laterality.LEFT, view=MammoView.MLO)
    prepared = prepare_volume(ds, (512, 320))
    image = stored_frames(ds)[0]
    view = prepare_view(image, Laterality.LEFT, View.MLO, (512, 320),
                        patient_orientation=("A", "FR"))
    assert prepared.frame == view.frame
    assert (prepared.best_center, prepared.crop_window) == (view.best_center, view.crop_window)
    assert np.allclose(prepared.array[0], view.array, atol=1e-5)


def test_window_comes_once_from_the_projection_or_the_central_slice() -> None:
    base = render_breast(MATRIX[0], MATRIX[1], Laterality.LEFT, MammoView.CC, 5, 12, 0.2)
    stack = np.stack([base] * 5)
    centre = stack[2]
    centre[:, 230:] = 0  # the central slice shows less of the breast
    ds = reread(build_dbt_view(DbtViewSpec(study=STUDY, laterality=Laterality.LEFT,
                                           pixels=stack)))
    mip = prepare_volume(ds, (320, 256))
    central = prepare_volume(ds, (320, 256), reference="central")
    expected_mip = prepare_view(stack.max(axis=0).astype(np.float32), Laterality.LEFT, View.CC,
                                (320, 256))
    expected_central = prepare_view(centre.astype(np.float32), Laterality.LEFT, View.CC,
                                    (320, 256))
    assert mip.crop_window == expected_mip.crop_window
    assert central.crop_window == expected_central.crop_window
    assert mip.crop_window != central.crop_window
    assert mip.frame == expected_mip.frame and central.frame == expected_central.frame


def test_fixture_dbt_source_gets_the_fixture_window(fixtures_dir: Path) -> None:
    """The shared 3D-GMIC fixture volume was made from 0_R-CC.png (per-slice blur and noise,
    background kept) and preprocessed at 2116x1339 by the reference: same window here."""
    summary = json.loads((fixtures_dir / "gmic3d_summary.json").read_text())
    image = cv2.imread(str(fixtures_dir / "images" / summary["source_image"]),
                       cv2.IMREAD_UNCHANGED)
    depth = int(summary["n_slices"])
    inside = image > 0
    rng = np.random.default_rng(0)
    stack = np.zeros((depth, *image.shape), dtype=np.uint16)
    for k in range(depth):
        blurred = cv2.GaussianBlur(image.astype(np.float32), (0, 0), 1.0 + k)
        noisy = blurred + rng.normal(0, 20, image.shape).astype(np.float32)
        stack[k] = np.where(inside, np.clip(noisy, 1, 4095), 0).astype(np.uint16)
    laterality = Laterality(summary["view"].split("-")[0])
    ds = reread(build_dbt_view(DbtViewSpec(study=STUDY, laterality=laterality,
                                           view=MammoView(summary["view"].split("-")[1]),
                                           pixels=stack)))
    prepared = prepare_volume(ds)
    assert list(prepared.array.shape) == summary["full_res_volume_shape"]
    assert list(prepared.best_center) == summary["best_center_full_res"]


def test_peak_memory_stays_near_one_float32_volume() -> None:
    ds = dbt(slices=60, matrix=(512, 400), view=MammoView.MLO)  # read before measuring
    tracemalloc.start()
    try:
        prepared = prepare_volume(ds, (384, 256))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    volume_bytes = prepared.array.nbytes
    assert prepared.array.shape == (60, 384, 256)
    # all 60 decoded float32 source frames alone would be 60*512*400*4 bytes = 2.1 volumes
    assert peak < 2.5 * volume_bytes, f"peak {peak / volume_bytes:.2f} x the float32 volume"
