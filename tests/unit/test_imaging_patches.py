"""The patch-classifier grid and patches match the reference fixture for 1_L_CC.png."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from tests.unit.imaging_fixture_cases import load_png
from triage.imaging import (
    crop_and_flip,
    exam_patch_grids,
    extract_patches,
    patch_grid,
    standardize_whole,
    stride_list,
)
from triage.vocabulary import Laterality


@pytest.fixture(scope="module")
def summary(fixtures_dir):
    return json.loads((fixtures_dir / "patch_classifier_summary.json").read_text())


@pytest.fixture(scope="module")
def cropped(fixtures_dir, summary):
    images = json.loads((fixtures_dir / "images.json").read_text())
    laterality = Laterality(images[summary["image"]]["laterality"])
    pixels = load_png(fixtures_dir / "images" / summary["image"])
    _, flipped_crop = crop_and_flip(pixels, faces_right=laterality is Laterality.LEFT)
    return flipped_crop


def _grid(summary, shape):
    hp = summary["hyperparameters"]
    rng = random.Random(hp["python_random_seed"])
    return patch_grid(shape, rng, patch_size=hp["patch_size"], stride=hp["stride_fixed"])


def test_cropped_image_has_the_reference_shape(summary, cropped):
    assert list(cropped.shape) == summary["cropped_shape"]


def test_stride_lists_match_the_reference_draw(summary, cropped):
    grid = _grid(summary, cropped.shape)
    # The reference names the list along the image height "width_stride_list".
    assert list(grid.row_strides) == summary["width_stride_list"]
    assert list(grid.col_strides) == summary["length_stride_list"]
    assert len(grid) == summary["n_patches_total"] == len(grid.offsets)


def test_patch_grid_leaves_the_global_random_state_alone(summary):
    random.seed(1234)
    before = random.getstate()
    _grid(summary, tuple(summary["cropped_shape"]))
    assert random.getstate() == before


def test_exam_grids_draw_from_one_generator_in_image_order(summary):
    shape = tuple(summary["cropped_shape"])
    first, second = exam_patch_grids([shape, shape], seed=summary["hyperparameters"][
        "python_random_seed"
    ])
    assert list(first.row_strides) == summary["width_stride_list"]
    assert second.row_strides != first.row_strides  # the generator moved on


@pytest.mark.parametrize("length", [256, 257, 325, 326, 327, 600, 1263, 2592, 3000])
def test_strides_end_the_last_patch_at_the_image_edge(length):
    strides = stride_list(length, random.Random(7))
    assert sum(strides) == length - 256
    assert all(0 < s <= 70 for s in strides)
    if strides:
        assert max(strides) - min(strides) <= 1
    assert len(strides) == -(-(length - 256) // 70)  # as few patches as stride 70 allows


def test_patches_match_the_reference_standardised_patches(fixtures_dir, summary, cropped):
    io = np.load(fixtures_dir / "patch_classifier_io.npz")
    indices = io["patch_indices"]
    assert list(indices) == summary["selected_patch_indices"]
    grid = _grid(summary, cropped.shape)
    patches = extract_patches(standardize_whole(cropped), grid, indices)
    assert patches.shape == io["patches_fp16"].shape
    np.testing.assert_array_equal(patches.astype(np.float16), io["patches_fp16"])


def test_patch_order_is_column_block_by_column_block(summary):
    grid = _grid(summary, tuple(summary["cropped_shape"]))
    offsets = grid.offsets
    rows = len(grid.row_strides) + 1
    assert offsets[0] == (0, 0)
    assert offsets[1] == (summary["width_stride_list"][0], 0)
    assert offsets[rows] == (0, summary["length_stride_list"][0])
    height, width = summary["cropped_shape"]
    assert offsets[-1] == (height - 256, width - 256)
