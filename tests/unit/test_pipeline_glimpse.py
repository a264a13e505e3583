"""GlimpseNet members score a synthetic exam through ``score_exam`` (reduced-resolution
testing member, seeded demo weights): a ViewScore per view whose glimpses are its ROIs,
the region map its saliency, placed on the source image by its InputFrame; test-time
augmentation averages the member's probabilities over the seeded windows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from tests.member_helpers import member_settings, synthetic_exam_images
from triage.config import Settings
from triage.imaging import decode_pixels, prepare_view, sample_windows
from triage.outputs.common import roi_source_box
from triage.outputs.overlay import render_overlay
from triage.pipeline import ExamImage, load_ensemble, score_exam
from triage.results import ExamResult
from triage.vocabulary import Laterality, View, WeightsStatus

MEMBER = "glimpsenet-testing-small"
INPUT = (1024, 640)
GLIMPSES, GLIMPSE_SIDE, MAP = 4, 104, (128, 128)


def _settings(tmp: Path, **overrides: object) -> Settings:
    return member_settings(tmp, MEMBER, **overrides)


@pytest.fixture(scope="module")
def exam(tmp_path_factory: pytest.TempPathFactory) -> list[ExamImage]:
    return synthetic_exam_images(tmp_path_factory.mktemp("exam"), seed=11)


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory, exam: list[ExamImage]) -> ExamResult:
    ensemble = load_ensemble(_settings(tmp_path_factory.mktemp("scored")))
    return score_exam(exam, ensemble, study_instance_uid="1.2.826.0.1.3680043.8.498.15")


def test_every_view_is_scored_with_its_glimpses_as_rois(result: ExamResult) -> None:
    (member,) = result.members
    assert member.included and member.weights_status is WeightsStatus.SYNTHETIC_DEMO
    assert result.category == "NOT TRIAGED"  # demo weights are never triage
    assert sorted((v.laterality, v.view) for v in result.views) == sorted(
        (lat, view) for lat in Laterality for view in View)
    assert not result.coverage_gaps
    for view in result.views:
        assert view.member == MEMBER
        assert 0 <= view.p_benign <= 1 and 0 <= view.p_malignant <= 1
        assert len(view.rois) == GLIMPSES
        attention = [roi.attention for roi in view.rois]
        assert attention == sorted(attention, reverse=True)  # best glimpse first
        for roi in view.rois:
            assert (roi.height, roi.width) == (GLIMPSE_SIDE, GLIMPSE_SIDE)
            assert 0 <= roi.top <= INPUT[0] - GLIMPSE_SIDE and 0 <= roi.left <= INPUT[1] - GLIMPSE_SIDE
            assert 0 <= roi.attention <= 1 and roi.frame is None


def test_the_region_map_is_the_saliency_and_each_glimpse_scores_its_mean(result: ExamResult) -> None:
    # the map spans the 1024x640 input: 8 input rows and 5 input columns per cell; a
    # 104x104 glimpse covers round(13) x round(20.8) = 13 x 21 cells from (top/8, left/5)
    for view in result.views:
        for saliency in (view.saliency_malignant, view.saliency_benign):
            assert saliency is not None and saliency.shape == MAP and saliency.dtype == np.float32
            assert float(saliency.min()) >= 0 and float(saliency.max()) <= 1
        assert view.saliency_malignant is not None
        np.testing.assert_array_equal(view.saliency_malignant, view.saliency_benign)
        for roi in view.rois:
            assert roi.top % 8 == 0 and roi.left % 5 == 0
            window = view.saliency_malignant[roi.top // 8:roi.top // 8 + 13,
                                             roi.left // 5:roi.left // 5 + 21]
            assert roi.attention == pytest.approx(float(window.mean()), rel=1e-5, abs=1e-7)


def test_the_input_frame_places_the_glimpses_on_the_source_image(
        result: ExamResult, exam: list[ExamImage]) -> None:
    paths = {img.sop_instance_uid: img.path for img in exam}
    for view in result.views:
        rows, cols = view.frame.source_shape
        for roi in view.rois:
            top, left, bottom, right = roi_source_box(view, roi)
            assert 0 <= top <= bottom < rows and 0 <= left <= right < cols
    view = result.views[0]
    ds = pydicom.dcmread(paths[view.sop_instance_uid])
    picture = render_overlay(result, ds, decode_pixels(ds).array)
    assert picture.image_rows == view.frame.source_shape[0]
    assert any(MEMBER in line for line in picture.legend)


def test_test_time_augmentation_averages_the_seeded_windows(tmp_path: Path,
                                                            exam: list[ExamImage]) -> None:
    image = exam[0]
    ensemble = load_ensemble(_settings(tmp_path, tta_samples=2, tta_seed=7))
    scored = score_exam([image], ensemble, study_instance_uid="1.2.3")
    (view,) = scored.views
    prepared = prepare_view(decode_pixels(pydicom.dcmread(image.path)).array, image.laterality,
                            image.view, INPUT)
    windows = sample_windows(prepared, 2, 7)  # the exam's only prepared input: seed + 0
    module = ensemble.members[0].module
    with torch.inference_mode():
        probs = torch.cat([module(torch.from_numpy(w.array)[None, None]).probabilities
                           for w in windows])
    assert (scored.tta_samples, scored.tta_seed) == (2, 7)
    assert view.p_benign == pytest.approx(float(probs[:, 0].mean()), abs=1e-5)
    assert view.p_malignant == pytest.approx(float(probs[:, 1].mean()), abs=1e-5)
    assert len(view.rois) == GLIMPSES
