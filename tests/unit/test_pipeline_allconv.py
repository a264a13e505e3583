"""All-conv members in the pipeline: whole-image preprocessing, the paper's flip averaging,
and a synthetic exam scored through score_exam with the reduced-resolution member."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from triage.config import EnsembleMember, Settings, load_settings
from triage.errors import PreprocessingError, WeightsError
from triage.imaging import decode_pixels
from triage.imaging.whole_image import prepare_whole_image
from triage.models import ensure_demo_weights, load_member
from triage.models.allconv import RESNET_TOP, AllConvClassifier, AllConvConfig
from triage.outputs.overlay import saliency_on_source
from triage.pipeline import ExamImage, load_ensemble, score_exam
from triage.pipeline.allconv import TTA_NOTE, flip_averaged, flip_variants
from triage.synthetic import ExamSpec, generate_exam
from triage.vocabulary import ImageClass, Laterality, View

MEMBER = "allconv-testing-small"


@pytest.fixture(scope="module")
def small_model() -> AllConvClassifier:
    """Resnet-Resnet with BN statistics that keep the softmax away from 0 and 1; at
    192x160 its map is 2x2."""
    torch.manual_seed(3)
    model = AllConvClassifier(AllConvConfig(patch_net="resnet50", top=RESNET_TOP)).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.fill_(4.0)
    return model


def test_flip_averaged_prediction_is_the_mean_of_four_flips_and_invariant_to_flipping(
        small_model: AllConvClassifier) -> None:
    x = torch.randn(1, 1, 192, 160)
    variants = flip_variants(x)
    assert variants.shape == (4, 1, 192, 160)
    with torch.no_grad():
        plain = flip_averaged(small_model, x)
        each = small_model(variants).p_malignant
        assert torch.allclose(plain.p_malignant, each.mean(), atol=1e-6)
        assert 0.01 < float(plain.p_malignant) < 0.99
        assert float(each.max() - each.min()) > 1e-4  # the flips do differ
        for dims in ((-1,), (-2,), (-2, -1)):  # horizontal, vertical, both
            flipped = flip_averaged(small_model, x.flip(dims))
            assert torch.allclose(flipped.p_malignant, plain.p_malignant, atol=1e-6)
            # the saliency follows the image: flipping the input flips the map
            assert torch.allclose(flipped.saliency, plain.saliency.flip(dims), atol=1e-6)
    assert plain.saliency.shape == (1, 2, 2)


def test_whole_image_preprocessing_scales_to_255_resizes_and_keeps_the_whole_frame() -> None:
    pixels = np.zeros((400, 300), dtype=np.float32)
    pixels[100:300, 0:200] = 1000.0
    pixels[150, 50] = 4000.0
    prepared = prepare_whole_image(pixels, Laterality.LEFT, View.CC, (96, 72))
    assert prepared.array.shape == (96, 72) and prepared.array.dtype == np.float32
    assert prepared.array.max() == pytest.approx(255.0 * 1000 / 4000, rel=0.1)  # peak blurs
    assert prepared.array[:10].max() == pytest.approx(0.0, abs=1e-3)  # background stays 0
    frame = prepared.frame
    assert (frame.source_shape, frame.input_shape, frame.flipped) == ((400, 300), (400, 300),
                                                                      False)
    assert frame.to_source(0, 0) == (0, 0) and frame.to_source(399, 299) == (399, 299)
    # a map spanning the model input covers the whole source image
    assert saliency_on_source(frame, np.ones((3, 2), dtype=np.float32)).min() == 1.0
    with pytest.raises(PreprocessingError, match="no positive pixel"):
        prepare_whole_image(np.zeros((40, 30)), Laterality.LEFT, View.CC, (16, 16))


def _settings(tmp: Path, **overrides: object) -> Settings:
    s = load_settings(data_dir=tmp / "data", testing=True, allow_uncalibrated=True, device="cpu",
                      ensemble=[EnsembleMember(name=MEMBER, weight=1.0)], **overrides)
    s.prepare_directories()
    ensure_demo_weights(s, [MEMBER])
    return s


@pytest.fixture(scope="module")
def exam(tmp_path_factory: pytest.TempPathFactory) -> list[ExamImage]:
    summary = generate_exam(ExamSpec(seed=11, scale=0.25, lesion=True),
                            tmp_path_factory.mktemp("exam"))
    images = []
    for path in summary.files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        images.append(ExamImage(str(ds.SOPInstanceUID), str(ds.SOPClassUID), Path(path),
                                Laterality(ds.ImageLaterality), View(ds.ViewPosition),
                                ImageClass.FFDM))
    return images


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
        assert view.p_benign == 0.0 and 0.0 <= view.p_malignant <= 1.0
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


def test_the_testing_member_needs_triage_testing(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    refused = load_settings(data_dir=settings.data_dir, allow_uncalibrated=True,
                            ensemble=[EnsembleMember(name=MEMBER, weight=1.0)])
    with pytest.raises(WeightsError, match="TRIAGE_TESTING=1"):
        load_member(MEMBER, refused, torch.device("cpu"))
