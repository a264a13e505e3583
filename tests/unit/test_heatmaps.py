"""Dense heatmaps: batched tensor gathering equals a plain per-patch loop, and the fixture's
patches taken through the heatmap patch extraction give the reference softmax.

The loop comparison uses a small seeded DenseNet (classifier weights scaled so that the
probabilities vary from patch to patch) on a 600x500 region of a real fixture mammogram;
the fixture check uses the fixture DenseNet-121 weights.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.unit.imaging_fixture_cases import load_png
from triage.errors import ModelError
from triage.imaging import PatchGrid, crop_and_flip, patch_grid, standardize_whole
from triage.models.densenet import DenseNet, DenseNetConfig
from triage.models.heatmaps import (
    coverage_mean,
    gather_patches,
    generate_heatmaps,
    patch_corners,
)
from triage.models.weights import load_state, read_state_dict
from triage.vocabulary import Laterality

PROBABILITY_ATOL = 1e-4


@pytest.fixture(scope="module")
def summary(fixtures_dir: Path) -> dict:
    return json.loads((fixtures_dir / "patch_classifier_summary.json").read_text())


@pytest.fixture(scope="module")
def standardized(fixtures_dir: Path, summary) -> np.ndarray:
    """The reference's heatmap input: the cropped, right-facing, standardised image."""
    images = json.loads((fixtures_dir / "images.json").read_text())
    laterality = Laterality(images[summary["image"]]["laterality"])
    pixels = load_png(fixtures_dir / "images" / summary["image"])
    _, flipped = crop_and_flip(pixels, faces_right=laterality is Laterality.LEFT)
    return standardize_whole(flipped)


@pytest.fixture(scope="module")
def small_model() -> DenseNet:
    torch.manual_seed(0)
    model = DenseNet(DenseNetConfig(growth_rate=8, block_config=(2, 2, 2, 2),
                                    num_init_features=16))
    with torch.no_grad():
        model.classifier.weight.mul_(100.0)
    return model.eval()


@pytest.fixture(scope="module")
def region(standardized) -> torch.Tensor:
    return torch.from_numpy(standardized[1000:1600, 600:1100]).float()  # 600 x 500


@pytest.fixture(scope="module")
def region_grid(region) -> PatchGrid:
    return patch_grid(tuple(region.shape), random.Random(0))


def loop_reference(model: DenseNet, image: np.ndarray, grid: PatchGrid) -> np.ndarray:
    """One patch at a time, sums and counts in numpy: the plain way."""
    size = grid.patch_size
    sums = np.zeros((2, *image.shape))
    counts = np.zeros(image.shape)
    with torch.inference_mode():
        for top, left in grid.offsets:
            patch = torch.from_numpy(np.ascontiguousarray(
                image[top:top + size, left:left + size]))[None, None]
            probabilities = model(patch).probabilities[0].numpy()
            sums[:, top:top + size, left:left + size] += probabilities[:2, None, None]
            counts[top:top + size, left:left + size] += 1
    return sums / counts


def test_batched_heatmaps_equal_the_per_patch_loop(small_model, region, region_grid):
    heatmaps = generate_heatmaps(small_model, region, region_grid, batch_size=7)
    expected = loop_reference(small_model, region.numpy(), region_grid)
    assert heatmaps.malignant.shape == heatmaps.benign.shape == region.shape
    assert float(heatmaps.malignant.std()) > 1e-3 and float(heatmaps.benign.std()) > 1e-3
    np.testing.assert_allclose(heatmaps.malignant.numpy(), expected[0], atol=1e-5, rtol=0)
    np.testing.assert_allclose(heatmaps.benign.numpy(), expected[1], atol=1e-5, rtol=0)
    assert heatmaps.patch_probabilities.shape == (len(region_grid), 4)


def test_batch_size_does_not_change_the_heatmaps(small_model, region, region_grid):
    one = generate_heatmaps(small_model, region, region_grid, batch_size=1)
    many = generate_heatmaps(small_model, region, region_grid, batch_size=64)
    torch.testing.assert_close(one.patch_probabilities, many.patch_probabilities,
                               atol=1e-6, rtol=0)


def test_patch_corners_follow_the_grid_order(region_grid):
    corners = patch_corners(region_grid)
    assert [tuple(c) for c in corners.tolist()] == region_grid.offsets


def test_gathered_patches_are_the_image_slices(region, region_grid):
    corners = patch_corners(region_grid)
    patches = gather_patches(region, corners, region_grid.patch_size)
    for index in (0, 5, len(corners) - 1):
        top, left = corners[index].tolist()
        assert torch.equal(patches[index], region[top:top + 256, left:left + 256])


def test_coverage_mean_averages_overlapping_patches():
    grid = PatchGrid(shape=(6, 5), patch_size=4, row_strides=(2,), col_strides=(1,))
    values = torch.tensor([[1.0], [3.0], [5.0], [7.0]])  # (r0,c0) (r2,c0) (r0,c1) (r2,c1)
    mean = coverage_mean(values, grid, (6, 5))[0]
    assert mean[0, 0] == 1.0  # only the first patch
    assert mean[5, 4] == 7.0  # only the last patch
    assert mean[3, 2] == 4.0  # all four patches
    assert mean[0, 2] == 3.0  # patches (r0, c0) and (r0, c1)


def test_a_grid_for_another_image_is_refused(small_model, region):
    grid = patch_grid((700, 500), random.Random(0))
    with pytest.raises(ModelError, match="does not fit"):
        generate_heatmaps(small_model, region, grid)


def test_fixture_patches_through_the_heatmap_extraction_give_the_reference_softmax(
        fixtures_dir, summary, standardized):
    with np.load(fixtures_dir / "patch_classifier_io.npz") as data:
        io = {k: data[k] for k in data.files}
    hp = summary["hyperparameters"]
    grid = patch_grid(standardized.shape, random.Random(hp["python_random_seed"]),
                      patch_size=hp["patch_size"], stride=hp["stride_fixed"])
    corners = patch_corners(grid)[torch.from_numpy(io["patch_indices"])]
    patches = gather_patches(torch.from_numpy(standardized).float(), corners, grid.patch_size)
    # the fixture stores (and the reference ran on) the patches rounded to float16
    rounded = patches.half()
    assert np.array_equal(rounded.numpy(), io["patches_fp16"])
    model = DenseNet()
    load_state(model, read_state_dict(fixtures_dir / summary["weights"]), "fixture patch model")
    with torch.inference_mode():
        out = model.eval()(rounded.float()[:, None])
    np.testing.assert_allclose(out.probabilities.numpy(), io["softmax"], atol=PROBABILITY_ATOL)
