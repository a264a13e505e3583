"""GMIC against the reference implementation's outputs (fixture weights and input).

One model and one full-size forward pass are shared by the module (a full-size CPU
forward takes about a second); the batch, autocast and purity tests use a half-size
input (1472x960, saliency map 23x15, the same 4x4 ROI window).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from triage.errors import ModelError, WeightsError
from triage.models import GMIC, GMICConfig, GMICOutput, build_model
from triage.models.gmic import saliency_shape
from triage.models.weights import load_state, read_state_dict

PROBABILITY_ATOL = 1e-4  # fixtures README: probabilities / attention / saliency
FEATURE_ATOL, FEATURE_RTOL = 1e-3, 1e-3  # fixtures README: logits / feature vectors


@pytest.fixture(scope="module")
def hyper(fixtures_dir: Path) -> dict:
    return json.loads((fixtures_dir / "gmic_summary.json").read_text())["hyperparameters"]


@pytest.fixture(scope="module")
def state(fixtures_dir: Path) -> dict[str, torch.Tensor]:
    return read_state_dict(fixtures_dir / "gmic_resnet18_weights_fp16.pt")


@pytest.fixture(scope="module")
def model(hyper: dict, state: dict[str, torch.Tensor]) -> GMIC:
    net = GMIC(GMICConfig.from_hyperparameters(hyper))
    load_state(net, state, "fixture weights")
    return net.float().eval()


@pytest.fixture(scope="module")
def full_input(fixtures_dir: Path, hyper: dict) -> torch.Tensor:
    raw = np.load(fixtures_dir / "gmic_input_fp16.npy").astype(np.float32)
    return torch.from_numpy(raw.reshape(hyper["input_shape"]))


@pytest.fixture(scope="module")
def reference(fixtures_dir: Path) -> dict[str, np.ndarray]:
    with np.load(fixtures_dir / "gmic_outputs.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def full_output(model: GMIC, full_input: torch.Tensor) -> GMICOutput:
    with torch.inference_mode():
        return model(full_input, return_crops=True)


@pytest.fixture(scope="module")
def half_views(full_input: torch.Tensor) -> torch.Tensor:
    """Four different 1472x960 views made from the fixture input."""
    small = full_input[..., ::2, ::2].contiguous()
    return torch.cat([small, small.flip(-1), small.flip(-2), small.roll(300, dims=-2)])


@pytest.mark.parametrize("ours,theirs", [
    ("saliency_map", "saliency_map"), ("y_global", "y_global"), ("y_local", "y_local"),
    ("y_fusion", "y_fusion"), ("patch_attention", "patch_attns"),
])
def test_probabilities_match_reference(full_output: GMICOutput, reference: dict, ours: str,
                                       theirs: str) -> None:
    value = getattr(full_output, ours)
    assert value.dtype == torch.float32
    np.testing.assert_allclose(value.numpy(), reference[theirs], atol=PROBABILITY_ATOL, rtol=0)


@pytest.mark.parametrize("name", ["global_vec", "h_crops", "z"])
def test_feature_vectors_match_reference(full_output: GMICOutput, reference: dict,
                                         name: str) -> None:
    np.testing.assert_allclose(getattr(full_output, name).numpy(), reference[name],
                               atol=FEATURE_ATOL, rtol=FEATURE_RTOL)


def test_patch_locations_equal_reference(full_output: GMICOutput, reference: dict) -> None:
    assert full_output.patch_locations.dtype == torch.int64
    assert np.array_equal(full_output.patch_locations.numpy(), reference["patch_locations"])


def test_crops_equal_reference_patches(full_output: GMICOutput, reference: dict) -> None:
    assert full_output.crops is not None
    crops = full_output.crops.numpy()
    assert crops.shape == reference["patches_fp16"].shape
    assert np.array_equal(crops.astype(np.float16), reference["patches_fp16"])


def test_global_feature_map_shape_matches_reference(full_output: GMICOutput, reference: dict,
                                                    full_input: torch.Tensor) -> None:
    n, c = full_output.global_vec.shape
    assert [n, c, *full_output.saliency_map.shape[2:]] == reference["h_g_shape"].tolist()
    assert saliency_shape(tuple(full_input.shape[2:])) == tuple(reference["h_g_shape"][2:])


def test_crops_are_returned_only_on_request(model: GMIC, half_views: torch.Tensor) -> None:
    with torch.inference_mode():
        assert model(half_views[:1]).crops is None


def test_state_dict_layout_is_the_published_one(model: GMIC, fixtures_dir: Path,
                                                hyper: dict) -> None:
    listed = json.loads((fixtures_dir / "keys_gmic.json").read_text())
    ours = model.state_dict()
    assert list(ours) == [item["key"] for item in listed]
    assert all(list(ours[item["key"]].shape) == item["shape"] for item in listed)
    n_params = json.loads((fixtures_dir / "gmic_summary.json").read_text())["n_params"]
    assert sum(p.numel() for p in model.parameters()) == n_params


def test_four_view_batch_equals_four_single_view_runs(model: GMIC,
                                                      half_views: torch.Tensor) -> None:
    with torch.inference_mode():
        batched = model(half_views, return_crops=True)
        singles = [model(half_views[i:i + 1], return_crops=True) for i in range(4)]
    h, w = half_views.shape[-2:]
    assert tuple(batched.saliency_map.shape[2:]) == saliency_shape((h, w))
    for field in GMICOutput._fields:
        joined = torch.cat([getattr(s, field) for s in singles])
        value = getattr(batched, field)
        if value.dtype == torch.int64:
            assert torch.equal(value, joined), field
        else:
            torch.testing.assert_close(value, joined, atol=1e-5, rtol=1e-5, msg=field)
    assert len({tuple(map(tuple, p.tolist())) for p in batched.patch_locations}) > 1


def test_saliency_map_size_follows_the_input(model: GMIC, half_views: torch.Tensor,
                                             reference: dict) -> None:
    with torch.inference_mode():
        out = model(half_views[:1])
    full_hw = reference["saliency_map"].shape[2:]
    assert tuple(out.saliency_map.shape[2:]) == tuple((s + 1) // 2 for s in full_hw)
    assert out.patch_locations.shape == reference["patch_locations"].shape


def test_forward_stores_nothing_on_the_module(model: GMIC, half_views: torch.Tensor) -> None:
    before_attrs = {name: set(vars(m)) for name, m in model.named_modules()}
    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.inference_mode():
        first = model(half_views[:2])
        second = model(half_views[:2])
    assert {name: set(vars(m)) for name, m in model.named_modules()} == before_attrs
    for key, value in model.state_dict().items():
        assert torch.equal(value, before_state[key]), key
    assert torch.equal(first.y_fusion, second.y_fusion)


def test_autocast_keeps_saliency_and_roi_in_float32(model: GMIC,
                                                    half_views: torch.Tensor) -> None:
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(half_views[:1])
    assert out.saliency_map.dtype == torch.float32
    assert out.y_global.dtype == torch.float32
    assert out.patch_locations.dtype == torch.int64
    assert torch.isfinite(out.y_fusion.float()).all()


def test_input_must_be_single_channel_batch(model: GMIC) -> None:
    with pytest.raises(ModelError, match=r"\(N, 1, H, W\)"):
        model(torch.zeros(1, 3, 256, 256))


@pytest.mark.parametrize("change", ["missing", "extra", "shape"])
def test_strict_loading_names_the_offending_key(state: dict[str, torch.Tensor],
                                                hyper: dict, change: str) -> None:
    broken = dict(state)
    key = "mil_attn_U.weight"
    if change == "missing":
        del broken[key]
    elif change == "extra":
        broken["mil_attn_U.bias"] = torch.zeros(128)
        key = "mil_attn_U.bias"
    else:
        broken[key] = torch.zeros(64, 512)
    with pytest.raises(WeightsError, match=key.replace(".", r"\.")):
        load_state(GMIC(GMICConfig.from_hyperparameters(hyper)), broken, "test weights")


def test_build_model_refuses_a_file_with_a_wrong_layout(state: dict[str, torch.Tensor],
                                                        tmp_path: Path) -> None:
    broken = {k: v for k, v in state.items() if not k.startswith("fusion_dnn")}
    path = tmp_path / "broken.pt"
    torch.save(broken, path)
    with pytest.raises(WeightsError, match="missing key"):
        build_model("gmic-resnet18-1", weights=path)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_forward_matches_reference(model: GMIC, full_input: torch.Tensor,
                                        reference: dict) -> None:
    cuda_model = GMIC(model.config)
    cuda_model.load_state_dict(model.state_dict())
    cuda_model = cuda_model.cuda().eval()
    with torch.inference_mode():
        out = cuda_model(full_input.cuda())
    assert np.array_equal(out.patch_locations.cpu().numpy(), reference["patch_locations"])
    np.testing.assert_allclose(out.y_fusion.cpu().numpy(), reference["y_fusion"],
                               atol=PROBABILITY_ATOL, rtol=0)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16):
        half = cuda_model(full_input.cuda())
    assert half.saliency_map.dtype == torch.float32
    assert half.patch_locations.dtype == torch.int64
