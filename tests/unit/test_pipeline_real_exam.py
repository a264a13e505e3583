"""score_exam on the wrapped real exam 0 with the fixture weights for all five members.

The pipeline's per-view probabilities must be exactly what a direct call of each model on
the reference preprocessing gives; breast and exam numbers follow the documented rules,
recomputed here by hand from those per-view numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.dicom_builders import exam0_pngs, real_exam0
from triage.config import Settings, load_settings
from triage.imaging import prepare_view
from triage.models import build_model, get_spec, import_weights
from triage.pipeline import ExamImage, load_ensemble, score_exam
from triage.vocabulary import NOT_TRIAGED, ImageClass, Laterality, View, WeightsStatus

MEMBERS = [f"gmic-resnet18-{i}" for i in range(1, 6)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, fixtures_dir: Path) -> tuple[Settings, list[ExamImage]]:
    tmp = tmp_path_factory.mktemp("pipeline")
    settings = load_settings(data_dir=tmp / "data", allow_uncalibrated=True, device="cpu")
    settings.prepare_directories()
    for name in MEMBERS:
        import_weights(fixtures_dir / "gmic_resnet18_weights_fp16.pt", name, settings)
    import pydicom

    images = []
    for path in real_exam0(tmp):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        images.append(ExamImage(sop_instance_uid=str(ds.SOPInstanceUID),
                                sop_class_uid=str(ds.SOPClassUID), path=path,
                                laterality=Laterality(ds.ImageLaterality),
                                view=View(ds.ViewPosition), image_class=ImageClass.FFDM))
    return settings, images


@pytest.fixture(scope="module")
def result_and_direct(setup: tuple[Settings, list[ExamImage]], fixtures_dir: Path):  # type: ignore[no-untyped-def]
    settings, images = setup
    ensemble = load_ensemble(settings, torch.device("cpu"))
    result = score_exam(images, ensemble, study_instance_uid="1.2.3.4")
    # direct calls: reference preprocessing of the PNGs, then each model on the 4-view batch
    import cv2

    pngs = exam0_pngs(fixtures_dir)
    order = [(img.laterality, img.view) for img in images]
    batch = np.stack([
        prepare_view(cv2.imread(str(pngs[key]), cv2.IMREAD_UNCHANGED), key[0], key[1],
                     get_spec(MEMBERS[0]).input_size[key[1]]).array for key in order
    ])[:, None]
    direct = {}
    for name in MEMBERS:
        # y_fusion does not depend on the pooling percentage (only y_global does), so with
        # one weight file the five members must agree; each still gets its own direct call.
        model = build_model(name, weights=fixtures_dir / "gmic_resnet18_weights_fp16.pt")
        with torch.inference_mode():
            out = model(torch.from_numpy(batch))
        for i, key in enumerate(order):
            direct[(name, key)] = out.y_fusion[i].numpy()
    return result, direct, images


def test_per_view_scores_equal_a_direct_model_call(result_and_direct) -> None:  # type: ignore[no-untyped-def]
    result, direct, _ = result_and_direct
    assert len(result.views) == 20
    for v in result.views:
        expected = direct[(v.member, (v.laterality, v.view))]
        assert v.p_benign == pytest.approx(float(expected[0]), abs=1e-5)
        assert v.p_malignant == pytest.approx(float(expected[1]), abs=1e-5)


def test_breast_and_exam_aggregation_by_hand(result_and_direct) -> None:  # type: ignore[no-untyped-def]
    result, direct, _ = result_and_direct
    for breast in result.breasts:
        lat = breast.laterality
        per_member = []
        for name in MEMBERS:
            cc, mlo = direct[(name, (lat, View.CC))], direct[(name, (lat, View.MLO))]
            per_member.append(((cc[0] + mlo[0]) / 2, (cc[1] + mlo[1]) / 2))
            assert breast.per_member[name][1] == pytest.approx(per_member[-1][1], abs=1e-5)
        assert breast.p_benign == pytest.approx(sum(0.2 * b for b, _ in per_member), abs=1e-5)
        assert breast.p_malignant == pytest.approx(sum(0.2 * m for _, m in per_member), abs=1e-5)
    assert result.exam_score == pytest.approx(max(b.p_malignant for b in result.breasts))


def test_unverified_fixture_weights_make_the_exam_not_triaged(result_and_direct) -> None:  # type: ignore[no-untyped-def]
    result, _, _ = result_and_direct
    assert not result.verified
    assert {m.weights_status for m in result.members} == {WeightsStatus.IMPORTED_UNVERIFIED}
    assert result.category == NOT_TRIAGED and result.not_triaged_reason
    assert all(m.weights_sha256 and len(m.weights_sha256) == 64 for m in result.members)


def test_saliency_and_rois_come_back_as_numpy_on_the_input_grid(result_and_direct) -> None:  # type: ignore[no-untyped-def]
    result, _, _ = result_and_direct
    v = result.views[0]
    assert isinstance(v.saliency_malignant, np.ndarray) and v.saliency_malignant.shape == (46, 30)
    assert len(v.rois) == 6 and all(r.height == 256 and r.width == 256 for r in v.rois)
    assert abs(sum(r.attention for r in v.rois) - 1.0) < 1e-4
