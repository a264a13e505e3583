"""The all-convolutional whole-image classifier (Shen et al. 2019): shapes, gradients, the
class activation map, the patch classifier and strict weight loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from triage.errors import ModelError, WeightsError
from triage.models import build_model, get_spec, list_specs
from triage.models.allconv import (
    RESNET_TOP,
    VGG_TOP,
    AllConvClassifier,
    AllConvConfig,
    PatchClassifier,
)
from triage.models.allconv_blocks import feature_size
from triage.models.allconv_specs import PAPER_MODELS
from triage.models.weights import load_state

CONFIGS = {name: (patch_net, top) for name, patch_net, top, _ in PAPER_MODELS}


#: smallest convenient input per top: the VGG top blocks pool twice after the /32 trunk
SMALL_INPUT = {"resnet": (64, 96), "vgg": (128, 128)}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_each_paper_configuration_gives_probabilities_a_map_and_gradients(name: str) -> None:
    """Gradients reach the input and the first patch-classifier convolution from the
    image-level output (end-to-end trainable); only a few weights ask for gradients, to
    keep the test fast."""
    patch_net, top = CONFIGS[name]
    torch.manual_seed(0)
    model = AllConvClassifier(AllConvConfig(patch_net=patch_net, top=top)).train()
    model.requires_grad_(False)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    watched = [convs[0].weight, convs[-1].weight, model.fc.weight]
    for p in watched:
        p.requires_grad_(True)
    size = SMALL_INPUT[top[0].kind]
    x = torch.randn(2, 1, *size, requires_grad=True)
    out = model(x)
    h, w = model.feature_shape(size)
    assert out.logits.shape == out.probabilities.shape == (2, 2)
    assert out.malignant_map.shape == out.saliency.shape == (2, h, w) and min(h, w) >= 1
    assert torch.allclose(out.probabilities.sum(dim=1), torch.ones(2))
    out.logits[:, 1].sum().backward()
    for grad in (x.grad, *(p.grad for p in watched)):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_paper_input_gives_a_9x7_map_for_every_configuration() -> None:
    for patch_net, top in CONFIGS.values():
        assert feature_size(patch_net, top, (1152, 896)) == (9, 7)


def test_the_map_averages_to_the_image_logit_difference() -> None:
    """The saliency is a class activation map: mean of the per-cell logit differences is
    the image's, so sigmoid of it is p_malignant."""
    torch.manual_seed(1)
    model = AllConvClassifier(AllConvConfig(patch_net="vgg16", top=VGG_TOP)).eval()
    with torch.no_grad():
        for m in model.modules():  # moderate activations so the softmax is not saturated
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.fill_(25.0)
        out = model(torch.randn(1, 1, 160, 128))
    diff = out.logits[:, 1] - out.logits[:, 0]
    assert torch.allclose(out.malignant_map.mean(dim=(1, 2)), diff, atol=1e-4)
    assert torch.allclose(torch.sigmoid(out.malignant_map.mean(dim=(1, 2))), out.p_malignant,
                          atol=1e-5)


def test_one_grey_channel_is_the_same_as_three_copies() -> None:
    torch.manual_seed(2)
    model = AllConvClassifier(AllConvConfig(patch_net="vgg16", top=VGG_TOP)).eval()
    x = torch.randn(1, 1, 128, 128)
    with torch.no_grad():
        assert torch.equal(model(x).logits, model(x.expand(-1, 3, -1, -1).clone()).logits)


def test_too_small_or_badly_shaped_inputs_are_refused_with_a_message() -> None:
    model = AllConvClassifier(AllConvConfig(patch_net="vgg16", top=VGG_TOP)).eval()
    with pytest.raises(ModelError, match="too small"):
        model(torch.zeros(1, 1, 64, 64))
    with pytest.raises(ModelError, match=r"expects input \(N, 1, H, W\)"):
        model(torch.zeros(1, 2, 128, 128))
    with pytest.raises(ModelError, match="unknown patch classifier"):
        AllConvConfig(patch_net="densenet121")
    with pytest.raises(ModelError, match="2 classes"):
        AllConvConfig(num_classes=5)


def test_patch_classifier_has_five_classes_and_shares_the_trunk_keys() -> None:
    patch = PatchClassifier("vgg16").eval()
    with torch.no_grad():
        out = patch(torch.randn(2, 1, 64, 64))
    assert out.probabilities.shape == (2, 5)
    assert torch.allclose(out.probabilities.sum(dim=1), torch.ones(2))
    whole = AllConvClassifier(AllConvConfig(patch_net="vgg16", top=RESNET_TOP))
    trunk = {k for k in patch.state_dict() if k.startswith("patch.")}
    assert trunk == {k for k in whole.state_dict() if k.startswith("patch.")}
    whole.load_state_dict({**whole.state_dict(), **{k: patch.state_dict()[k] for k in trunk}})


def test_registry_entries_are_outside_the_default_ensemble_and_testing_is_marked() -> None:
    from triage.config import load_settings
    from triage.models.registry import TESTING_ONLY

    names = {s.name for s in list_specs() if s.preprocessing.startswith("allconv")}
    assert names == set(CONFIGS) | {"allconv-testing-small"}
    assert not names & {m.name for m in load_settings().ensemble}
    assert get_spec("allconv-testing-small").extra[TESTING_ONLY]
    for name in CONFIGS:
        spec = get_spec(name)
        assert spec.input_size[next(iter(spec.input_size))] == (1152, 896)
        assert "CC BY-NC-ND 4.0" in spec.licence and spec.weights.git_blob_id is None


def test_strict_loading_refuses_a_missing_or_an_extra_key(tmp_path: Path) -> None:
    model = build_model("allconv-testing-small")
    state = model.state_dict()
    load_state(model, state, "complete.pt")
    missing = dict(state)
    del missing["top.1.layers.0.bn.running_var"]
    with pytest.raises(WeightsError, match=r"1 missing key\(s\): top.1.layers.0.bn.running_var"):
        load_state(model, missing, "missing.pt")
    extra = {**state, "top.2.layers.0.conv.weight": torch.zeros(1)}
    with pytest.raises(WeightsError, match=r"1 unexpected key\(s\): top.2.layers.0.conv.weight"):
        load_state(model, extra, "extra.pt")
    path = tmp_path / "extra.pt"
    torch.save(extra, path)
    with pytest.raises(WeightsError, match="unexpected key"):
        build_model("allconv-testing-small", weights=path)
