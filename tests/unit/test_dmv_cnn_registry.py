"""The DMV-CNN and patch-classifier entries of the model registry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from triage.config import Settings
from triage.errors import WeightsError
from triage.models import build_model, get_spec, import_weights, weights_status
from triage.models.densenet import DenseNet
from triage.models.dmv_cnn import ImageBreastModel, SplitBreastModel
from triage.models.registry import PUBLISHED_DMV_FILES
from triage.vocabulary import View, WeightsStatus

BREAST_LEVEL = ("dmv-cnn-image-only", "dmv-cnn-image-and-heatmaps")
PATCH = "dmv-patch-densenet121"


@pytest.fixture(scope="module")
def published(fixtures_dir: Path) -> dict:
    data = json.loads((fixtures_dir / "published_weights.json").read_text())
    return data["breast_cancer_classifier"]


def test_published_files_and_blob_ids_match_the_fixture_record(published):
    names = {name for name, _, _ in PUBLISHED_DMV_FILES}
    assert set(BREAST_LEVEL) | {PATCH} <= names
    for name, path, blob in PUBLISHED_DMV_FILES:
        weights = get_spec(name).weights
        assert (weights.published_path, weights.git_blob_id) == (path, blob)
        assert published["files"][path] == blob
        assert weights.published_repository == published["repository"]


def test_breast_level_models_wrap_their_state_dict_and_the_patch_model_does_not(published):
    assert "{'model': state_dict} for the breast-level models" in published["format"]
    for name in BREAST_LEVEL:
        assert get_spec(name).weights.state_dict_key == "model"
    assert get_spec(PATCH).weights.state_dict_key is None


def test_specs_carry_preprocessing_sizes_and_the_research_only_licence(fixtures_dir):
    summary = json.loads((fixtures_dir / "dmv_cnn_summary.json").read_text())
    sizes = summary["hyperparameters"]["full_resolution_input_sizes"]
    for name in BREAST_LEVEL:
        spec = get_spec(name)
        assert spec.preprocessing == "breast_cancer_classifier" and spec.modality == "ffdm"
        assert {v.value: list(s) for v, s in spec.input_size.items()} == sizes
    for name in (*BREAST_LEVEL, PATCH):
        spec = get_spec(name)
        assert "CC BY-NC-SA 4.0" in spec.licence and "research" in spec.intended_use.lower()
        assert "Wu et al. 2019" in spec.paper
    patch_summary = json.loads((fixtures_dir / "patch_classifier_summary.json").read_text())
    size = patch_summary["hyperparameters"]["patch_size"]
    assert set(get_spec(PATCH).input_size.values()) == {(size, size)}
    assert set(get_spec(PATCH).input_size) == {View.CC, View.MLO}


def test_image_only_model_loads_the_wrapped_fixture_checkpoint(fixtures_dir):
    path = fixtures_dir / "dmv_cnn_view_split_weights_fp16.pt"
    model = build_model("dmv-cnn-image-only", weights=path)
    assert isinstance(model, SplitBreastModel) and not model.training
    stored = torch.load(path, weights_only=True)["model"]
    key = "four_view_resnet.r_mlo.final_bn.running_var"
    assert torch.equal(model.state_dict()[key], stored[key].float())


def test_image_and_heatmaps_model_takes_three_channels_and_refuses_image_only_weights(
        fixtures_dir):
    model = build_model("dmv-cnn-image-and-heatmaps")
    assert isinstance(model, SplitBreastModel)
    assert model.four_view_resnet.cc.first_conv.in_channels == 3
    with pytest.raises(WeightsError, match="first_conv"):
        build_model("dmv-cnn-image-and-heatmaps",
                    weights=fixtures_dir / "dmv_cnn_view_split_weights_fp16.pt")


def test_image_wise_mode_is_an_override_of_the_image_only_spec():
    assert isinstance(build_model("dmv-cnn-image-only", mode="image_wise"), ImageBreastModel)


def test_patch_classifier_loads_the_raw_fixture_state_dict(fixtures_dir):
    summary = json.loads((fixtures_dir / "patch_classifier_summary.json").read_text())
    model = build_model(PATCH, weights=fixtures_dir / summary["weights"])
    assert isinstance(model, DenseNet) and not model.training
    assert model.classifier.out_features == summary["hyperparameters"]["number_of_classes"]


def test_importing_a_file_that_is_not_the_published_one_stays_unverified(fixtures_dir,
                                                                         settings: Settings):
    result = import_weights(fixtures_dir / "dmv_cnn_view_split_weights_fp16.pt",
                            "dmv-cnn-image-only", settings)
    assert not result.matches_published
    assert weights_status("dmv-cnn-image-only", settings) is WeightsStatus.IMPORTED_UNVERIFIED
