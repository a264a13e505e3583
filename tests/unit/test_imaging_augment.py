"""Seeded test-time augmentation reproduces the reference's recorded random windows."""

from __future__ import annotations

import numpy as np
import pytest

from tests.unit.imaging_fixture_cases import (
    preprocessing_cases,
    record_for,
    sha256_float32,
    view_of,
)
from triage.imaging import prepare_view, random_window, sample_windows, standardize


@pytest.mark.parametrize(("json_name", "folder", "image", "pipeline"), preprocessing_cases())
def test_random_window_reproduces_seeded_reference_example(
    fixtures_dir, json_name, folder, image, pipeline
):
    record, pixels = record_for(fixtures_dir, json_name, folder, image)
    expected = record[pipeline]
    laterality, view = view_of(record)
    prepared = prepare_view(pixels, laterality, view, tuple(expected["input_size"]))
    examples = expected["seeded_augmentation_examples"]
    assert examples
    for example in examples:
        sample = random_window(
            prepared.flipped_crop,
            prepared.view,
            prepared.best_center,
            prepared.input_size,
            np.random.RandomState(example["seed"]),
            max_crop_noise=tuple(example["max_crop_noise"]),
            max_crop_size_noise=example["max_crop_size_noise"],
        )
        assert list(sample.location_window.as_tuple()) == example["window_after_location_noise"]
        assert list(sample.window.as_tuple()) == example["window_after_size_noise"]
        out = example["output_before_normalization"]
        assert list(sample.image.shape) == out["shape"]
        assert sample.image.dtype == np.float32
        for stat in ("min", "max"):
            assert getattr(sample.image, stat)() == pytest.approx(out[stat], abs=1e-3)
        assert sha256_float32(sample.image) == out["sha256_float32"]


def test_sample_windows_is_reproducible_and_starts_with_the_single_seeded_draw(fixtures_dir):
    record, pixels = record_for(fixtures_dir, "preprocessing.json", "images", "0_R-MLO.png")
    expected = record["GMIC"]
    example = expected["seeded_augmentation_examples"][0]
    laterality, view = view_of(record)
    prepared = prepare_view(pixels, laterality, view, tuple(expected["input_size"]))

    first = sample_windows(prepared, 3, seed=example["seed"])
    again = sample_windows(prepared, 3, seed=example["seed"])
    other = sample_windows(prepared, 3, seed=example["seed"] + 1)

    assert len(first) == 3
    assert list(first[0].sample.window.as_tuple()) == example["window_after_size_noise"]
    np.testing.assert_array_equal(
        first[0].array, standardize(first[0].sample.image)
    )
    for a, b in zip(first, again, strict=True):
        assert a.sample.window == b.sample.window
        np.testing.assert_array_equal(a.array, b.array)
    windows = {s.sample.window for s in first}
    assert len(windows) == 3, "successive draws differ"
    assert {s.sample.window for s in other} != windows
    for sample in first:
        assert sample.array.shape == prepared.input_size
        assert abs(float(sample.array.mean())) < 1e-4
        assert float(sample.array.std()) == pytest.approx(1.0, abs=1e-4)


def test_without_noise_the_random_window_is_the_test_time_window(fixtures_dir):
    record, pixels = record_for(fixtures_dir, "preprocessing.json", "images", "1_R_CC.png")
    expected = record["breast_cancer_classifier"]
    laterality, view = view_of(record)
    prepared = prepare_view(pixels, laterality, view, tuple(expected["input_size"]))
    rng = np.random.RandomState(0)
    state = rng.get_state()[1].copy()
    sample = random_window(
        prepared.flipped_crop, prepared.view, prepared.best_center, prepared.input_size, rng,
        max_crop_noise=(0, 0), max_crop_size_noise=0,
    )
    np.testing.assert_array_equal(rng.get_state()[1], state)  # nothing drawn
    assert sample.window == prepared.final_window
    assert sample.padding == prepared.padding
    np.testing.assert_array_equal(standardize(sample.image), prepared.array)


def test_augmented_input_maps_a_marked_pixel_back_to_the_source(fixtures_dir):
    record, pixels = record_for(fixtures_dir, "preprocessing.json", "images", "0_R-CC.png")
    laterality, view = view_of(record)
    marked = np.array(pixels, dtype=np.float32)
    row, col = 900, 500
    assert marked[row - 4 : row + 5, col - 4 : col + 5].min() > 0
    marked[row - 4 : row + 5, col - 4 : col + 5] = 60000.0  # survives the cubic resize
    prepared = prepare_view(marked, laterality, view, (2944, 1920))
    (sample,) = sample_windows(prepared, 1, seed=3)
    assert sample.sample.resized
    peak = np.unravel_index(np.argmax(sample.array), sample.array.shape)
    src_row, src_col = sample.to_source(float(peak[0]), float(peak[1]))
    assert abs(src_row - row) <= 4.5 and abs(src_col - col) <= 4.5
