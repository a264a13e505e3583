"""The fast cropping morphology equals the reference's iterated 3x3-cross operations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from tests.unit.imaging_fixture_cases import load_png
from triage.imaging.cropping import (
    crop_mammogram,
    dilate_diamond,
    erode_diamond,
    largest_component,
)


def _random_blobs(seed: int, shape=(160, 130)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=6)
    mask = field > np.quantile(field, 0.45)
    mask[rng.integers(0, shape[0], 30), rng.integers(0, shape[1], 30)] = True  # salt
    return mask


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("radius", [1, 3, 10, 25])
def test_diamond_erosion_equals_iterated_cross_erosion(seed, radius):
    mask = _random_blobs(seed)
    expected = ndimage.binary_erosion(mask, iterations=radius)
    np.testing.assert_array_equal(erode_diamond(mask, radius), expected)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("radius", [1, 3, 10, 25])
def test_diamond_dilation_equals_iterated_cross_dilation(seed, radius):
    component = largest_component(ndimage.binary_erosion(_random_blobs(seed), iterations=2))
    assert component is not None
    expected = ndimage.binary_dilation(component, iterations=radius)
    np.testing.assert_array_equal(dilate_diamond(component, radius), expected)


@pytest.mark.parametrize("name", ["0_R-MLO.png", "1_L_CC.png"])
def test_fast_morphology_equals_scipy_on_real_mammograms_at_100_iterations(fixtures_dir, name):
    foreground = load_png(fixtures_dir / "images" / name) > 0
    eroded = ndimage.binary_erosion(foreground, iterations=100)
    np.testing.assert_array_equal(erode_diamond(foreground, 100), eroded)
    component = largest_component(eroded)
    assert component is not None
    np.testing.assert_array_equal(
        dilate_diamond(component, 100), ndimage.binary_dilation(component, iterations=100)
    )


def test_largest_component_uses_4_connectivity():
    mask = np.zeros((10, 10), bool)
    mask[1:4, 1:4] = True  # 9 pixels
    mask[4, 4] = mask[5, 5] = mask[6, 6] = True  # diagonal chain: not 4-connected
    mask[6:9, 7:9] = True  # 6 pixels (touches (6,6) side by side -> 7 with it)
    component = largest_component(mask)
    assert component is not None
    assert component.sum() == 9
    assert component[1:4, 1:4].all()


def test_thick_label_is_dropped_and_box_follows_the_breast():
    image = np.zeros((900, 760), np.uint16)
    image[100:800, 0:400] = 1000  # breast against the left (chest-wall) edge
    image[20:320, 440:720] = 3000  # label: survives the erosion but is smaller
    _, components = ndimage.label(erode_diamond(image > 0, 100))
    assert components == 2
    crop = crop_mammogram(image, faces_right=True)
    top, bottom, left, right = crop.window_location
    assert (top, bottom, left) == (100 - 50, 800 + 50, 0)
    assert right == 400 + 50  # nipple-side buffer only
    assert crop.distance_from_starting_side == 0


def test_left_facing_breast_reports_gap_from_the_right_edge():
    image = np.zeros((900, 700), np.uint16)
    image[100:800, 270:670] = 1000  # right breast, chest wall 30 px from the right edge
    crop = crop_mammogram(image, faces_right=False)
    assert crop.distance_from_starting_side == 30
    assert crop.window_location[2:] == (220, 670)
