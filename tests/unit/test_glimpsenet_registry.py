"""GlimpseNet in the registry: one named model per pooling function of the paper plus a
testing-only configuration, their families and texts, never in the default ensemble, and
seeded demo weights that load strictly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from triage.config import load_settings
from triage.errors import WeightsError
from triage.models import ensure_demo_weights, get_spec, load_member
from triage.models.glimpsenet import GlimpseNet
from triage.models.mil import MILPooling
from triage.models.weights import demo_state, verification_refusal
from triage.pipeline.families import runner_for
from triage.pipeline.glimpse import GLIMPSE
from triage.vocabulary import View, WeightsStatus

MEMBERS = {"glimpsenet-lse": MILPooling.LSE, "glimpsenet-noisyand": MILPooling.NOISY_AND,
           "glimpsenet-topk": MILPooling.TOPK}
TESTING = "glimpsenet-testing-small"


def test_the_papers_three_models_are_named_members_with_their_pooling() -> None:
    for name, pooling in MEMBERS.items():
        spec = get_spec(name)
        hp = spec.hyperparameters
        assert hp.pooling is pooling
        assert (hp.lse_r, hp.noisy_and_a, hp.noisy_and_b, hp.topk_k) == (5.0, 10.0, 0.2, 3)
        assert (hp.low_res_shape, hp.glimpse_shape, hp.num_glimpses, hp.nms_iou) == (
            (512, 512), (299, 299), 6, 0.5)
        assert spec.input_size == {View.CC: (2944, 1920), View.MLO: (2944, 1920)}
        assert (spec.preprocessing, spec.modality) == ("glimpsenet", "ffdm")
        assert spec.version and "GlimpseNet" in spec.architecture and "Hang" in spec.paper
        assert "No published weights" in spec.licence
        assert "research only" in spec.intended_use.lower()
        assert not spec.weights.is_published and not spec.extra
        assert runner_for(spec) is GLIMPSE
        refusal = verification_refusal(spec)
        assert refusal is not None and "knows no published file" in refusal


def test_the_testing_configuration_is_reduced_and_loads_only_when_testing(tmp_path: Path) -> None:
    spec = get_spec(TESTING)
    assert spec.preprocessing == "glimpsenet-testing" and runner_for(spec) is GLIMPSE
    assert spec.input_size[View.CC] == (1024, 640)
    assert spec.hyperparameters.low_res_shape == (128, 128)
    assert "TESTING ONLY" in spec.architecture and "tests" in spec.intended_use
    settings = load_settings(data_dir=tmp_path, allow_uncalibrated=True)
    with pytest.raises(WeightsError, match="only with TRIAGE_TESTING=1"):
        load_member(TESTING, settings, torch.device("cpu"))


def test_glimpsenet_is_never_in_the_default_ensemble(tmp_path: Path) -> None:
    names = {m.name for m in load_settings(data_dir=tmp_path).ensemble}
    assert not any("glimpse" in name for name in names)


def test_seeded_demo_weights_are_made_and_load_strictly_as_synthetic_demo(tmp_path: Path) -> None:
    name = "glimpsenet-topk"
    settings = load_settings(data_dir=tmp_path / "data", allow_uncalibrated=True)
    settings.prepare_directories()
    created = ensure_demo_weights(settings, [name])
    assert [e.name for e in created] == [name]
    assert created[0].status is WeightsStatus.SYNTHETIC_DEMO
    stored = torch.load(settings.models_dir / created[0].file, weights_only=True)
    assert stored.keys() == GlimpseNet(get_spec(name).hyperparameters).state_dict().keys()
    assert all(torch.equal(v, stored[k]) for k, v in demo_state(get_spec(name)).items())
    loaded = load_member(name, settings, torch.device("cpu"))
    assert loaded.weights_status is WeightsStatus.SYNTHETIC_DEMO
    assert isinstance(loaded.module, GlimpseNet) and not loaded.module.training
    assert ensure_demo_weights(settings, [name]) == []  # made once
