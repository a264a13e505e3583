"""Ensemble behaviour of score_exam at reduced resolution: test-time augmentation, a failing
member left out with its reason, start-up validation, and the worklist order."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from tests.member_helpers import member_settings, synthetic_exam_images
from triage.config import EnsembleMember, Settings, load_settings
from triage.errors import ConfigError, ModelError, WeightsError
from triage.imaging import decode_pixels, prepare_view, sample_windows
from triage.models import load_member
from triage.pipeline import Ensemble, ExamImage, load_ensemble, score_exam

MEMBER = "gmic-testing-small"


def _settings(tmp: Path, **overrides: object) -> Settings:
    return member_settings(tmp, MEMBER, **overrides)


@pytest.fixture(scope="module")
def exam(tmp_path_factory: pytest.TempPathFactory) -> list[ExamImage]:
    return synthetic_exam_images(tmp_path_factory.mktemp("exam"), seed=5)


def test_tta_averages_the_seeded_windows_and_records_n_and_seed(
    tmp_path: Path, exam: list[ExamImage]
) -> None:
    settings = _settings(tmp_path, tta_samples=3, tta_seed=42)
    ensemble = load_ensemble(settings)
    result = score_exam(exam, ensemble, study_instance_uid="1.2.3")
    assert (result.tta_samples, result.tta_seed) == (3, 42)
    again = score_exam(exam, ensemble, study_instance_uid="1.2.3")
    assert [v.p_malignant for v in again.views] == [v.p_malignant for v in result.views]
    # recompute one view by hand: same preprocessing, same windows, mean of the forwards
    module = ensemble.members[0].module
    keyed = sorted((img.sop_instance_uid, img) for img in exam)
    index = 0
    uid, img = keyed[index]
    prepared = prepare_view(decode_pixels(pydicom.dcmread(img.path)).array, img.laterality,
                            img.view, (1024, 640))
    windows = sample_windows(prepared, 3, 42 + index)
    with torch.inference_mode():
        probs = module(torch.from_numpy(np.stack([w.array for w in windows])[:, None])).y_fusion
    view = next(v for v in result.views if v.sop_instance_uid == uid)
    assert view.p_malignant == pytest.approx(float(probs[:, 1].mean()), abs=1e-5)
    plain = score_exam(exam, load_ensemble(_settings(tmp_path / "plain")), study_instance_uid="1")
    assert plain.tta_samples == 0 and plain.model_set_version != result.model_set_version


class _Broken(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> None:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")


def test_a_failing_member_is_left_out_with_its_reason(tmp_path: Path, exam: list[ExamImage]) -> None:
    settings = _settings(tmp_path)
    good = load_member(MEMBER, settings, torch.device("cpu"))
    broken = replace(good, module=_Broken(), spec=replace(good.spec, name="broken-member"))
    ensemble = Ensemble(settings=settings, device=torch.device("cpu"), members=[good, broken],
                        weights={MEMBER: 0.5, "broken-member": 0.5},
                        modality={MEMBER: "ffdm", "broken-member": "ffdm"}, model_set_version="ms-x")
    result = score_exam(exam, ensemble, study_instance_uid="1.2.3")
    left_out = [m for m in result.members if not m.included]
    assert [m.name for m in left_out] == ["broken-member"]
    assert left_out[0].failure_reason and "illegal memory access" in left_out[0].failure_reason
    assert {v.member for v in result.views} == {MEMBER}
    assert result.breasts[0].per_member.keys() == {MEMBER}


def test_unknown_member_or_missing_weights_fail_before_any_exam(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    with pytest.raises(ModelError, match="unknown model 'gmic-nope'"):
        load_ensemble(load_settings(data_dir=settings.data_dir, testing=True, allow_uncalibrated=True,
                                    ensemble=[EnsembleMember(name="gmic-nope", weight=1.0)]))
    with pytest.raises(WeightsError, match="no weights file"):
        load_ensemble(load_settings(data_dir=settings.data_dir, allow_uncalibrated=True,
                                    ensemble=[EnsembleMember(name="gmic-resnet34", weight=1.0)]))


def test_member_the_pipeline_cannot_run_or_a_wrong_modality_fails_before_any_weights(
        tmp_path: Path) -> None:
    """The patch classifier is a registered model but not an ensemble member; a 3D-GMIC
    member configured for FFDM would be left out of every exam. Both stop start-up, before
    any weights file is looked at (none exists here)."""
    data = tmp_path / "data"
    with pytest.raises(ConfigError, match=r"dmv-patch-densenet121 .*cannot be an ensemble member"):
        load_ensemble(load_settings(data_dir=data, allow_uncalibrated=True, ensemble=[
            EnsembleMember(name="dmv-patch-densenet121", weight=1.0)]))
    with pytest.raises(ConfigError, match=r"modality = 'ffdm'.* scores 'dbt' images"):
        load_ensemble(load_settings(data_dir=data, allow_uncalibrated=True, ensemble=[
            EnsembleMember(name="gmic3d-resnet18-1", weight=1.0, modality="ffdm")]))
    with pytest.raises(ValueError, match="modality"):
        EnsembleMember(name="gmic3d-resnet18-1", weight=1.0, modality="tomo")  # type: ignore[arg-type]


def test_member_modality_defaults_to_the_models_own(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    assert settings.ensemble[0].modality is None
    assert load_ensemble(settings).modality == {MEMBER: "ffdm"}
