"""The reference 2D preprocessing reproduced on every fixture image and both pipelines.

Expected values are read from preprocessing.json / preprocessing_synthetic.json.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.unit.imaging_fixture_cases import (
    preprocessing_cases,
    record_for,
    sha256_float32,
    view_of,
)
from triage.errors import PreprocessingError
from triage.imaging import prepare_view, resize_input, scaled_size
from triage.vocabulary import Laterality, View

STATS_ATOL = 1e-5


@pytest.mark.parametrize(("json_name", "folder", "image", "pipeline"), preprocessing_cases())
def test_prepare_view_reproduces_reference_record(fixtures_dir, json_name, folder, image, pipeline):
    record, pixels = record_for(fixtures_dir, json_name, folder, image)
    expected = record[pipeline]
    laterality, view = view_of(record)
    input_size = tuple(expected["input_size"])

    prepared = prepare_view(pixels, laterality, view, input_size)

    cropping = expected["cropping"]
    assert prepared.orientation.faces_right == (cropping["orientation_mode"] == "right")
    assert list(prepared.crop_window) == cropping["window_location"]
    assert [list(prepared.rightmost_points[0]), prepared.rightmost_points[1]] == cropping[
        "rightmost_points"
    ]
    assert [prepared.bottommost_points[0], list(prepared.bottommost_points[1])] == cropping[
        "bottommost_points"
    ]
    assert prepared.distance_from_starting_side == cropping["distance_from_starting_side"]
    assert list(prepared.cropped_shape) == expected["cropped_shape"]
    assert prepared.flipped == expected["flip_applied_at_load"]
    assert list(prepared.best_center) == expected["best_center"]
    padding = expected["padding"]
    assert prepared.padding.top == padding.get("top", 0)
    assert prepared.padding.bottom == padding.get("bottom", 0)
    assert prepared.padding.right == padding.get("right", 0)
    assert list(prepared.padded_shape) == expected["padded_image_shape"]
    window = expected["final_window"]
    assert prepared.final_window.as_tuple() == (
        window["top"],
        window["bottom"],
        window["left"],
        window["right"],
    )
    assert list(prepared.final_window.size) == window["size"]
    assert expected["resized"] is False

    before = prepared.final_window.cut(prepared.padding.apply(prepared.flipped_crop))
    assert sha256_float32(before) == expected["pre_normalization_stats"]["sha256_float32"]

    final = expected["final_input"]
    array = prepared.array
    assert array.dtype == np.float32
    assert list(array.shape) == final["shape"]
    for stat in ("mean", "std", "min", "max"):
        assert getattr(array.astype(np.float64), stat)() == pytest.approx(
            final[stat], abs=STATS_ATOL
        ), stat
    assert sha256_float32(array) == final["sha256_float32"]


def test_blank_image_raises_preprocessing_error():
    with pytest.raises(PreprocessingError, match="no breast found"):
        prepare_view(np.zeros((600, 400), np.uint16), Laterality.LEFT, View.CC, (512, 256))


def test_image_with_only_thin_structures_raises_preprocessing_error():
    image = np.zeros((1000, 800), np.uint16)
    image[100:900, 300:320] = 4000  # a 20-pixel wide line: removed by the erosion
    image[::7, ::5] = 100  # salt noise
    with pytest.raises(PreprocessingError, match="no breast found"):
        prepare_view(image, Laterality.RIGHT, View.MLO, (512, 256))


def _marked(pixels, row, col):
    marked = np.array(pixels, dtype=np.float32)
    assert marked[row, col] > 0, "mark a breast pixel so the crop does not change"
    marked[row, col] = 65535.0
    return marked


@pytest.mark.parametrize(
    ("json_name", "folder", "image", "pipeline"),
    [
        pytest.param("preprocessing.json", "images", "0_R-CC.png", "GMIC", id="flipped-padded-cc"),
        pytest.param(
            "preprocessing.json", "images", "0_L-MLO.png", "breast_cancer_classifier",
            id="mlo-bottom-padding",
        ),
        pytest.param(
            "preprocessing_synthetic.json", "preprocessing_synthetic", "synth_03_R-MLO.png",
            "GMIC", id="flipped-window-inside-large-image",
        ),
    ],
)
def test_input_frame_maps_a_marked_source_pixel_back_to_the_source(
    fixtures_dir, json_name, folder, image, pipeline
):
    record, pixels = record_for(fixtures_dir, json_name, folder, image)
    laterality, view = view_of(record)
    input_size = tuple(record[pipeline]["input_size"])
    top, bottom, left, right = record[pipeline]["cropping"]["window_location"]
    # A breast pixel inside the crop, off-centre so a wrong flip or offset shows.
    candidates = np.argwhere(np.asarray(pixels)[top:bottom, left:right] > 0)
    row, col = candidates[len(candidates) // 3] + (top, left)

    prepared = prepare_view(_marked(pixels, row, col), laterality, view, input_size)

    input_row, input_col = np.unravel_index(np.argmax(prepared.array), prepared.array.shape)
    assert prepared.array[input_row, input_col] > prepared.array.max() - 1e-3
    assert prepared.frame.to_source(int(input_row), int(input_col)) == (row, col)
    assert prepared.frame.input_shape == input_size
    assert prepared.frame.flipped == (laterality is Laterality.RIGHT)


def test_mirrored_image_with_patient_orientation_gives_the_same_input(fixtures_dir):
    record, pixels = record_for(fixtures_dir, "preprocessing.json", "images", "0_L-CC.png")
    input_size = tuple(record["GMIC"]["input_size"])
    usual = prepare_view(pixels, Laterality.LEFT, View.CC, input_size, patient_orientation="A\\R")
    mirrored = prepare_view(
        np.fliplr(pixels), Laterality.LEFT, View.CC, input_size, patient_orientation=["P", "R"]
    )
    assert not usual.flipped and mirrored.flipped
    assert mirrored.orientation.conflict is not None
    np.testing.assert_array_equal(mirrored.array, usual.array)
    # The same input pixel maps to mirror-image source columns.
    width = pixels.shape[1]
    for point in [(1000, 300), (50, 10), (2000, 700)]:
        r_usual, c_usual = usual.frame.to_source(*point)
        r_mirror, c_mirror = mirrored.frame.to_source(*point)
        assert r_mirror == r_usual
        assert c_mirror == width - 1 - c_usual


def test_mirrored_image_with_strict_orientation_raises(fixtures_dir):
    _, pixels = record_for(fixtures_dir, "preprocessing.json", "images", "0_L-CC.png")
    with pytest.raises(PreprocessingError, match="stored mirrored or its laterality is wrong"):
        prepare_view(
            pixels, Laterality.LEFT, View.CC, (2944, 1920),
            patient_orientation="P\\R", strict_orientation=True,
        )


def test_gmic_fixture_input_is_the_prepared_view(fixtures_dir):
    summary = json.loads((fixtures_dir / "gmic_summary.json").read_text())
    pipeline, image = summary["input"].split("__", 1)
    assert pipeline == "GMIC"
    record, pixels = record_for(fixtures_dir, "preprocessing.json", "images", image)
    laterality, view = view_of(record)
    prepared = prepare_view(pixels, laterality, view, tuple(record[pipeline]["input_size"]))
    expected = np.load(fixtures_dir / summary["input_file"])
    np.testing.assert_array_equal(prepared.array.astype(np.float16), expected)


def test_dmv_cnn_fixture_inputs_are_prepared_views_at_full_and_reduced_size(fixtures_dir):
    summary = json.loads((fixtures_dir / "dmv_cnn_summary.json").read_text())
    outputs = np.load(fixtures_dir / "dmv_cnn_outputs.npz")
    hyper = summary["hyperparameters"]
    for view_name, image in summary["exam"].items():
        laterality, angle = view_name.split("-")
        record, pixels = record_for(fixtures_dir, "preprocessing.json", "images", image)
        assert (record["laterality"], record["view_angle"]) == (laterality, angle)
        full_size = tuple(hyper["full_resolution_input_sizes"][angle])
        prepared = prepare_view(pixels, Laterality(laterality), View(angle), full_size)
        rounded = prepared.array.astype(np.float16).astype(np.float32)
        assert (
            sha256_float32(rounded)
            == summary["full_res"]["input_sha256_float32_of_fp16_rounded"][view_name]
        )
        size = scaled_size(full_size, hyper["scale"])
        assert list(size) == hyper["input_shapes"][view_name]
        small = resize_input(rounded, size).astype(np.float16)
        np.testing.assert_array_equal(small, outputs[f"input_{view_name}"].reshape(size))
