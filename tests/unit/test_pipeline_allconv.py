"""All-conv members in the pipeline: a synthetic exam scored through score_exam with the
reduced-resolution member, which loads only for tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from tests.member_helpers import member_settings, synthetic_exam_images
from triage.config import EnsembleMember, Settings, load_settings
from triage.errors import WeightsError
from triage.imaging import decode_pixels
from triage.imaging.whole_image import prepare_whole_image
from triage.models import load_member
from triage.pipeline import ExamImage, load_ensemble, score_exam
from triage.pipeline.allconv import TTA_NOTE, flip_averaged

MEMBER = "allconv-testing-small"


def _settings(tmp: Path, **overrides: object) -> Settings:
    return member_settings(tmp, MEMBER, **overrides)


@pytest.fixture(scope="module")
def exam(tmp_path_factory: pytest.TempPathFactory) -> list[ExamImage]:
    return synthetic_exam_images(tmp_path_factory.mktemp("exam"), seed=11)


def test_the_testing_member_scores_a_synthetic_exam_through_score_exam(
        tmp_path: Path, exam: list[ExamImage]) -> None:
    settings = _settings(tmp_path, tta_samples=2)
    ensemble = load_ensemble(settings)
    result = score_exam(exam, ensemble, study_instance_uid="1.2.3")
    assert [m.name for m in result.members if m.included] == [MEMBER]
    assert len(result.views) == 4 and not result.coverage_gaps
    assert result.category == "NOT TRIAGED"  # demo weights are never calibrated
    assert TTA_NOTE in result.notes  # random windows do not apply to this member
    member = ensemble.members[0]
    for view in result.views:
        assert view.p_benign is None and 0.0 <= view.p_malignant <= 1.0
        assert view.saliency_benign is None and view.rois == ()
        assert view.saliency_malignant is not None
        assert view.saliency_malignant.shape == member.module.feature_shape((288, 224))
        assert view.frame.input_shape == view.frame.source_shape
    # one view by hand: decode, whole-image recipe, minus the mean, the four flips
    image = exam[0]
    prepared = prepare_whole_image(decode_pixels(pydicom.dcmread(image.path)).array,
                                   image.laterality, image.view, (288, 224))
    x = torch.from_numpy(prepared.array - np.float32(52.16))[None, None]
    with torch.inference_mode():
        expected = float(flip_averaged(member.module, x).p_malignant[0])
    view = next(v for v in result.views if v.sop_instance_uid == image.sop_instance_uid)
    assert view.p_malignant == pytest.approx(expected, abs=1e-5)
    breast = next(b for b in result.breasts if b.laterality is image.laterality)
    both = [v.p_malignant for v in result.views if v.laterality is image.laterality]
    assert breast.p_malignant == pytest.approx(sum(both) / 2)  # per-breast mean of 2 views
    # no member estimates benign: the breast says so, and every output is built and says so
    assert breast.p_benign is None and breast.per_member[MEMBER][0] is None
    from triage.delivery import build_outputs

    study_uid = str(pydicom.dcmread(exam[0].path, stop_before_pixels=True).StudyInstanceUID)
    objects = build_outputs(settings, score_exam(exam, ensemble, study_instance_uid=study_uid),
                            [img.path for img in exam], {})
    kinds = [kind.value for kind, _ in objects]
    assert kinds.count("sc_overlay") == 4 and "sr_tid1500" in kinds


def test_the_testing_member_needs_triage_testing(tmp_path: Path) -> None:
    refused = load_settings(data_dir=tmp_path / "data", allow_uncalibrated=True,
                            ensemble=[EnsembleMember(name=MEMBER, weight=1.0)])
    with pytest.raises(WeightsError, match="TRIAGE_TESTING=1"):
        load_member(MEMBER, refused, torch.device("cpu"))
