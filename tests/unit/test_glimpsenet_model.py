"""GlimpseNet's networks on small inputs: Inception-v3 block shapes, the FCGN's map and
one-dimensional code, the whole forward (shapes, crops, pooling, gradients, purity), its
configuration checks, and strict weight loading."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from triage.errors import ModelError, WeightsError
from triage.models.fcgn import FCGN
from triage.models.glimpsenet import (
    BENIGN,
    MALIGNANT,
    GlimpseNet,
    GlimpseNetConfig,
    GlimpseNetOutput,
)
from triage.models.inception import (
    Figure5,
    Figure6,
    Figure7,
    GridReduction,
    InceptionV3Features,
)
from triage.models.mil import MILPooling, lse_pool, noisy_and_pool, topk_pool
from triage.models.weights import load_weights

SMALL = GlimpseNetConfig(input_shape=(256, 192), low_res_shape=(64, 64), glimpse_shape=(80, 80),
                         num_glimpses=3, fcgn_widths=(4, 8, 8, 8, 8), fcgn_code_channels=8,
                         topk_k=2)


@pytest.fixture(scope="module")
def model() -> GlimpseNet:
    torch.manual_seed(0)
    return GlimpseNet(SMALL).eval()


@pytest.fixture(scope="module")
def views() -> torch.Tensor:
    return torch.randn(2, 1, 256, 192, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def output(model: GlimpseNet, views: torch.Tensor) -> GlimpseNetOutput:
    with torch.no_grad():
        return model(views, return_crops=True)


def test_each_inception_module_keeps_or_reduces_the_grid_as_the_paper_says() -> None:
    # the modules are grid-size generic: small grids here, the paper's 35/17/8 grids below
    with torch.no_grad():
        assert Figure5(288)(torch.randn(1, 288, 9, 9)).shape == (1, 288, 9, 9)
        reduce35 = GridReduction(288, shallow=(192, 384), deep=(64, 96, 96))
        assert reduce35(torch.randn(1, 288, 9, 9)).shape == (1, 768, 4, 4)  # (9 - 3) // 2 + 1
        assert Figure6(768)(torch.randn(1, 768, 7, 7)).shape == (1, 768, 7, 7)
        reduce17 = GridReduction(768, shallow=(192, 320), deep=(192, 192, 192))
        assert reduce17(torch.randn(1, 768, 7, 7)).shape == (1, 1280, 3, 3)
        assert Figure7(1280)(torch.randn(1, 1280, 3, 3)).shape == (1, 2048, 3, 3)
        assert Figure7(2048)(torch.randn(1, 2048, 3, 3)).shape == (1, 2048, 3, 3)


def test_inception_v3_grids_are_35_17_8_at_299_and_it_needs_75_pixels() -> None:
    net = InceptionV3Features().eval()
    with torch.no_grad():
        g35, g17, g8 = net.feature_maps(torch.randn(1, 3, 299, 299))
        assert (g35.shape, g17.shape, g8.shape) == ((1, 288, 35, 35), (1, 768, 17, 17),
                                                    (1, 2048, 8, 8))
        assert net(torch.randn(2, 3, 75, 75)).shape == (2, 2048)
    with pytest.raises(ValueError, match="at least 75x75"):
        net(torch.randn(1, 3, 74, 90))


def test_fcgn_maps_the_low_resolution_view_through_a_one_dimensional_code() -> None:
    fcgn = FCGN((64, 96), widths=(4, 8, 8, 8, 8), code_channels=8).eval()
    codes: list[tuple[int, ...]] = []
    fcgn.code_fc.register_forward_hook(lambda _m, _i, out: codes.append(tuple(out.shape)))
    with torch.no_grad():
        region = fcgn(torch.randn(2, 1, 64, 96))
    assert region.shape == (2, 1, 64, 96)
    assert codes == [(2, 8, 1, 1)]
    assert (region >= 0).all()  # BatchNorm + ReLU after the last layer too
    assert fcgn.code.conv.kernel_size == (2, 3)  # the whole 2x3 grid after five pools
    with pytest.raises(ModelError, match="multiple of 32"):
        FCGN((64, 80))
    with pytest.raises(ModelError, match=r"expects \(N, C, 64, 96\)"):
        fcgn(torch.randn(1, 1, 64, 64))


def test_forward_gives_typed_batched_outputs_of_the_documented_shapes(
        model: GlimpseNet, views: torch.Tensor, output: GlimpseNetOutput) -> None:
    x, out = views, output
    assert isinstance(out, GlimpseNetOutput)
    assert out.probabilities.shape == (2, 2)
    assert out.class_probabilities.shape == (2, 3)
    assert out.instance_probabilities.shape == (2, 3, 3)
    assert out.region_map.shape == (2, 1, 64, 64)
    assert out.saliency.shape == (2, 64, 64) and out.saliency.dtype == torch.float32
    assert out.glimpse_boxes.shape == (2, 3, 4) and out.glimpse_boxes.dtype == torch.int64
    assert out.glimpse_scores.shape == (2, 3)
    assert out.crops is not None and out.crops.shape == (2, 3, 80, 80)
    assert float(out.saliency.min()) >= 0 and float(out.saliency.max()) <= 1
    assert torch.equal(out.probabilities, out.class_probabilities[:, [BENIGN, MALIGNANT]])
    assert torch.allclose(out.class_probabilities, lse_pool(out.instance_probabilities, 5.0))
    boxes = out.glimpse_boxes
    assert ((boxes[..., 2] - boxes[..., 0]) == 80).all() and ((boxes[..., 3] - boxes[..., 1]) == 80).all()
    assert (boxes[..., :2] >= 0).all() and (boxes[..., 2] <= 256).all() and (boxes[..., 3] <= 192).all()
    for n in range(2):
        for k in range(3):
            top, left, bottom, right = boxes[n, k].tolist()
            assert torch.equal(out.crops[n, k], x[n, 0, top:bottom, left:right])
    with pytest.raises(ModelError, match=r"\(N, 1, H, W\)"):
        model(torch.randn(1, 3, 256, 192))


@pytest.mark.parametrize("pooling,expected", [
    (MILPooling.NOISY_AND, lambda p: noisy_and_pool(p, 10.0, 0.2)),
    (MILPooling.TOPK, lambda p: topk_pool(p, 2, MALIGNANT)),
])
def test_the_configured_pooling_function_pools_the_glimpses(
        model: GlimpseNet, output: GlimpseNetOutput, pooling: MILPooling, expected: object) -> None:
    other = GlimpseNet(replace(SMALL, pooling=pooling))
    assert other.state_dict().keys() == model.state_dict().keys()  # one layout for all three
    instances = output.instance_probabilities
    assert torch.allclose(other.pool(instances), expected(instances))  # type: ignore[operator]


def test_gradients_reach_the_glimpse_classifier_and_the_input_but_not_the_fcgn(
        model: GlimpseNet) -> None:
    model.zero_grad()
    x = torch.randn(1, 1, 256, 192, requires_grad=True)
    model(x).probabilities[:, 1].sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert model.classifier.weight.grad is not None
    assert float(model.classifier.weight.grad.abs().sum()) > 0
    assert all(p.grad is not None for p in model.inception.parameters())
    assert all(p.grad is None for p in model.fcgn.parameters())  # the crops are chosen, not learnt
    model.zero_grad()
    model(torch.randn(1, 1, 256, 192)).region_map.sum().backward()  # the FCGN's own loss path
    assert all(p.grad is not None for p in model.fcgn.parameters())
    model.zero_grad()


def test_forward_is_pure_and_deterministic(model: GlimpseNet, views: torch.Tensor,
                                           output: GlimpseNetOutput) -> None:
    before_attrs = dict(vars(model))
    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        again = model(views, return_crops=True)
    assert vars(model).keys() == before_attrs.keys()
    assert all(vars(model)[k] is v for k, v in before_attrs.items())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before_state.items())
    for a, b in zip(output, again, strict=True):
        assert (a is None and b is None) or torch.equal(a, b)


@pytest.mark.parametrize("change,message", [
    (dict(glimpse_shape=(74, 80)), "at least 75x75"),
    (dict(glimpse_shape=(300, 80)), "larger than the input"),
    (dict(low_res_shape=(64, 48)), "multiple of 32"),
    (dict(pooling="max"), "pooling must be one of"),
    (dict(topk_k=4), "at least 4 instances"),
    (dict(lse_r=0.0), "r must be a positive"),
    (dict(noisy_and_b=2.0), "threshold b"),
    (dict(nms_iou=1.5), "nms_iou"),
])
def test_a_configuration_the_network_cannot_run_is_refused(change: dict, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        replace(SMALL, **change)


def test_pooling_accepts_its_name() -> None:
    assert replace(SMALL, pooling="noisy-and").pooling is MILPooling.NOISY_AND  # type: ignore[arg-type]


def test_strict_loading_refuses_a_missing_or_an_extra_key(model: GlimpseNet, tmp_path: Path) -> None:
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    good = tmp_path / "good.pt"
    torch.save(state, good)
    load_weights(model, good)  # the same layout loads (float16 files are widened on load)
    missing = tmp_path / "missing.pt"
    torch.save({k: v for k, v in state.items() if k != "classifier.bias"}, missing)
    with pytest.raises(WeightsError, match=r"1 missing key\(s\): classifier.bias"):
        load_weights(model, missing)
    extra = tmp_path / "extra.pt"
    torch.save({**state, "classifier.extra": torch.zeros(1)}, extra)
    with pytest.raises(WeightsError, match=r"1 unexpected key\(s\): classifier.extra"):
        load_weights(model, extra)
    model.load_state_dict(before)
