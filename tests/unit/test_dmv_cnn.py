"""DMV-CNN (Wu et al. 2019) against the reference implementation's outputs.

Fixture weights (view-wise checkpoint + image-wise heads) on the fixture's 0.25-scale exam
(CC 669x486, MLO 744x437); the full-resolution check is in test_dmv_cnn_full_resolution.py.
Every expected number is read from the fixture files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from triage.errors import ModelError, WeightsError
from triage.models.dmv_cnn import (
    DMV_INPUT_SIZE,
    DMVConfig,
    DMVMode,
    ImageBreastModel,
    SingleImageBreastModel,
    SplitBreastModel,
    SplitBreastOutput,
    build_dmv_cnn,
    resnet22,
    single_image_state,
)
from triage.models.weights import load_state, read_state_dict
from triage.vocabulary import Laterality, View

FEATURE_ATOL, FEATURE_RTOL = 1e-3, 1e-3  # fixtures README: log-probabilities / features
PROBABILITY_ATOL = 1e-4
VIEWS = ("L-CC", "R-CC", "L-MLO", "R-MLO")
#: output rows of the view-wise model, as dmv_cnn_summary.json's "output_order" names them
ROWS = ("left_benign", "right_benign", "left_malignant", "right_malignant")


def _layout(fixtures_dir: Path, name: str) -> list[tuple[str, tuple[int, ...]]]:
    items = json.loads((fixtures_dir / name).read_text())
    return [(i["key"], tuple(i["shape"])) for i in items]


def _ours(model: torch.nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items()]


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def summary(fixtures_dir: Path) -> dict:
    return json.loads((fixtures_dir / "dmv_cnn_summary.json").read_text())


@pytest.fixture(scope="module")
def view_split_state(fixtures_dir: Path) -> dict[str, torch.Tensor]:
    return read_state_dict(fixtures_dir / "dmv_cnn_view_split_weights_fp16.pt", "model")


@pytest.fixture(scope="module")
def image_wise_state(fixtures_dir: Path, view_split_state) -> dict[str, torch.Tensor]:
    heads = read_state_dict(fixtures_dir / "dmv_cnn_image_wise_heads_fp16.pt", "model")
    columns = {k: v for k, v in view_split_state.items() if k.startswith("four_view_resnet.")}
    return {**columns, **heads}


@pytest.fixture(scope="module")
def reference(fixtures_dir: Path) -> dict[str, np.ndarray]:
    with np.load(fixtures_dir / "dmv_cnn_outputs.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def inputs(reference) -> dict[str, torch.Tensor]:
    return {v: torch.from_numpy(reference[f"input_{v}"].astype(np.float32))[None, None]
            for v in VIEWS}


@pytest.fixture(scope="module")
def view_split(summary, view_split_state) -> SplitBreastModel:
    model = build_dmv_cnn(DMVConfig.from_hyperparameters(summary["hyperparameters"]))
    assert isinstance(model, SplitBreastModel)
    load_state(model, view_split_state, "fixture view-split weights")
    return model.eval()


@pytest.fixture(scope="module")
def output(view_split, inputs) -> SplitBreastOutput:
    with torch.inference_mode():
        return view_split(*(inputs[v] for v in VIEWS))


# -- layout ------------------------------------------------------------------------------
def test_view_split_state_dict_has_the_published_layout_and_size(fixtures_dir, summary):
    model = SplitBreastModel()
    assert _ours(model) == _layout(fixtures_dir, "keys_dmv_cnn_view_split.json")
    assert _n_params(model) == summary["n_params_view_split"]


def test_image_wise_state_dict_has_the_published_layout_and_size(fixtures_dir, summary):
    model = ImageBreastModel()
    assert _ours(model) == _layout(fixtures_dir, "keys_dmv_cnn_image_wise.json")
    assert _n_params(model) == summary["n_params_image_wise_full"]
    assert _n_params(SingleImageBreastModel()) == summary["n_params_single_image"]


def test_left_and_right_columns_are_one_module_per_angle():
    columns = SplitBreastModel().four_view_resnet
    assert columns.l_cc is columns.cc and columns.r_cc is columns.cc
    assert columns.l_mlo is columns.mlo and columns.r_mlo is columns.mlo
    assert columns.cc is not columns.mlo


def test_image_and_heatmaps_variant_differs_only_in_the_first_convolutions(fixtures_dir):
    image_only = dict(_layout(fixtures_dir, "keys_dmv_cnn_view_split.json"))
    with_heatmaps = dict(_ours(SplitBreastModel(input_channels=3)))
    assert with_heatmaps.keys() == image_only.keys()
    differing = {k for k in image_only if image_only[k] != with_heatmaps[k]}
    assert differing == {f"four_view_resnet.{a}.first_conv.weight"
                         for a in ("cc", "l_cc", "r_cc", "mlo", "l_mlo", "r_mlo")}
    for key in differing:
        out_ch, in_ch, kh, kw = image_only[key]
        assert in_ch == 1 and with_heatmaps[key] == (out_ch, 3, kh, kw)


def test_image_and_heatmaps_forward_takes_three_channel_views():
    torch.manual_seed(0)
    model = SplitBreastModel(input_channels=3).eval()
    cc = torch.randn(2, 3, 160, 120)
    mlo = torch.randn(2, 3, 176, 112)
    with torch.inference_mode():
        out = model(cc, cc.flip(-1), mlo, mlo.flip(-1))
    assert out.cc_logprob.shape == out.mlo_logprob.shape == (2, 4, 2)
    assert all(f.shape == (2, 256) for f in out.features)
    assert all(p.shape == (2,) for p in out.breast)
    with pytest.raises(ModelError, match=r"\(N, 3, H, W\)"):
        model(cc[:, :1], cc[:, :1], mlo[:, :1], mlo[:, :1])


def test_config_reads_the_fixture_hyperparameters(summary):
    config = DMVConfig.from_hyperparameters(summary["hyperparameters"])
    assert config.mode is DMVMode.VIEW_SPLIT
    assert config.input_channels == summary["hyperparameters"]["input_channels"]
    sizes = summary["hyperparameters"]["full_resolution_input_sizes"]
    assert {v.value: list(s) for v, s in DMV_INPUT_SIZE.items()} == sizes
    with pytest.raises(ModelError, match="input channels"):
        DMVConfig(input_channels=2)


# -- strict loading ----------------------------------------------------------------------
def test_checkpoint_without_an_alias_key_is_refused(view_split_state):
    state = {k: v for k, v in view_split_state.items()
             if not k.startswith("four_view_resnet.r_mlo.")}
    with pytest.raises(WeightsError, match="missing key"):
        load_state(SplitBreastModel(), state, "trimmed")


def test_checkpoint_whose_tied_aliases_differ_is_refused(view_split_state):
    state = dict(view_split_state)
    key = "four_view_resnet.l_cc.layer_list.2.0.conv1.weight"
    state[key] = state[key] + 1
    with pytest.raises(WeightsError, match="tied"):
        load_state(SplitBreastModel(), state, "tampered")


# -- outputs at 0.25 scale ---------------------------------------------------------------
def test_input_shapes_are_the_fixture_scale(summary, inputs):
    for view in VIEWS:
        assert list(inputs[view].shape[2:]) == summary["input_shapes"][view]


@pytest.mark.parametrize("angle", ["CC", "MLO"])
def test_view_wise_log_probabilities_match_the_reference(output, reference, angle):
    ours = (output.cc_logprob if angle == "CC" else output.mlo_logprob).numpy()
    np.testing.assert_allclose(ours, reference[f"{angle}_logprob"],
                               atol=FEATURE_ATOL, rtol=FEATURE_RTOL)


@pytest.mark.parametrize("view", VIEWS)
def test_average_pooled_features_match_the_reference(output, reference, view):
    ours = getattr(output.features, view.lower().replace("-", "_")).numpy()
    np.testing.assert_allclose(ours, reference[f"avgpool_{view}"],
                               atol=FEATURE_ATOL, rtol=FEATURE_RTOL)


def test_breast_probabilities_average_the_cc_and_mlo_branches(output, summary):
    cc = np.asarray(summary["CC_prob"])[0, :, 1]
    mlo = np.asarray(summary["MLO_prob"])[0, :, 1]
    for row, name in enumerate(ROWS):
        assert float(getattr(output.cc, name)) == pytest.approx(cc[row], abs=PROBABILITY_ATOL)
        assert float(getattr(output.mlo, name)) == pytest.approx(mlo[row], abs=PROBABILITY_ATOL)
        assert float(getattr(output.breast, name)) == pytest.approx(
            (cc[row] + mlo[row]) / 2, abs=PROBABILITY_ATOL)


def test_exams_in_one_batch_give_each_exam_its_own_result(view_split, inputs, output):
    other = {v: inputs[v].flip(-2) for v in VIEWS}  # a different exam of the same sizes
    with torch.inference_mode():
        batched = view_split(*(torch.cat([inputs[v], other[v]]) for v in VIEWS))
        alone = view_split(*(other[v] for v in VIEWS))
    np.testing.assert_allclose(batched.cc_logprob[:1].numpy(), output.cc_logprob.numpy(),
                               atol=1e-5)
    np.testing.assert_allclose(batched.mlo_logprob[1:].numpy(), alone.mlo_logprob.numpy(),
                               atol=1e-5)
    assert not torch.allclose(batched.cc_logprob[0], batched.cc_logprob[1], atol=1e-3)


def test_left_and_right_views_batched_through_their_column_give_the_same_result(
        view_split, inputs, output):
    columns = view_split.four_view_resnet
    try:
        columns.batch_sides = True
        with torch.inference_mode():
            batched = view_split(*(inputs[v] for v in VIEWS))
    finally:
        columns.batch_sides = None
    for ours, theirs in zip(batched.features, output.features, strict=True):
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(batched.cc_logprob.numpy(), output.cc_logprob.numpy(), atol=1e-5)


def test_forward_leaves_the_model_unchanged(view_split, inputs):
    attributes = dict(vars(view_split))
    before = {k: v.clone() for k, v in view_split.state_dict().items()}
    with torch.inference_mode():
        view_split(*(inputs[v] for v in VIEWS))
    assert dict(vars(view_split)).keys() == attributes.keys()
    after = view_split.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


# -- image-wise and single-image heads ---------------------------------------------------
def test_image_wise_model_matches_the_single_image_reference(image_wise_state, inputs,
                                                             reference, summary):
    model = ImageBreastModel()
    load_state(model, image_wise_state, "fixture image-wise weights")
    with torch.inference_mode():
        out = model.eval()(*(inputs[v] for v in VIEWS))
    for view in VIEWS:
        field = view.lower().replace("-", "_")
        logprob = getattr(out.logprob, field)
        assert logprob.shape == (1, 4, 2)
        np.testing.assert_allclose(logprob[:, :2].numpy(), reference[f"image_wise_logprob_{view}"],
                                   atol=FEATURE_ATOL, rtol=FEATURE_RTOL)
        benign, malignant = summary["image_wise_pred_benign_malignant"][view][0]
        assert float(getattr(out.benign, field)) == pytest.approx(benign, abs=PROBABILITY_ATOL)
        assert float(getattr(out.malignant, field)) == pytest.approx(malignant,
                                                                     abs=PROBABILITY_ATOL)
    expected_left = np.mean([summary["image_wise_pred_benign_malignant"][v][0][1]
                             for v in ("L-CC", "L-MLO")])
    assert float(out.breast.left_malignant) == pytest.approx(expected_left, abs=PROBABILITY_ATOL)


@pytest.mark.parametrize("view", VIEWS)
def test_single_image_model_matches_the_reference(image_wise_state, inputs, reference, view):
    laterality, angle = view.split("-")
    model = SingleImageBreastModel()
    load_state(model, single_image_state(image_wise_state, Laterality(laterality), View(angle)),
               f"single-image {view}")
    with torch.inference_mode():
        out = model.eval()(inputs[view])
    np.testing.assert_allclose(out.logprob.numpy(), reference[f"image_wise_logprob_{view}"],
                               atol=FEATURE_ATOL, rtol=FEATURE_RTOL)
    np.testing.assert_allclose(out.features.numpy(), reference[f"avgpool_{view}"],
                               atol=FEATURE_ATOL, rtol=FEATURE_RTOL)


def test_single_image_state_names_the_missing_head(view_split_state):
    with pytest.raises(WeightsError, match="fc1_lcc"):
        single_image_state(view_split_state, Laterality.LEFT, View.CC)


def test_column_output_size_follows_the_unpadded_first_convolution(summary):
    column = resnet22()
    for view in VIEWS:
        hw = tuple(summary["input_shapes"][view])
        with torch.inference_mode():
            out = column.eval()(torch.zeros(1, 1, *hw))
        assert tuple(out.shape[2:]) == column.output_shape(hw)
        first = ((hw[0] - 7) // 2 + 1, (hw[1] - 7) // 2 + 1)
        assert tuple(column.first_conv(torch.zeros(1, 1, *hw)).shape[2:]) == first
