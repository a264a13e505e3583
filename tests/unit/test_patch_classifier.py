"""The DenseNet-121 patch classifier against the reference's outputs on 8 fixture patches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from triage.errors import ModelError
from triage.models.densenet import (
    BENIGN_COLUMN,
    MALIGNANT_COLUMN,
    DenseNet,
    DenseNetConfig,
    PatchOutput,
    SameConv2d,
    SameMaxPool2d,
    same_padding,
)
from triage.models.weights import load_state, read_state_dict

LOGIT_ATOL = 1e-3  # fixtures README: raw logits
PROBABILITY_ATOL = 1e-4


@pytest.fixture(scope="module")
def summary(fixtures_dir: Path) -> dict:
    return json.loads((fixtures_dir / "patch_classifier_summary.json").read_text())


@pytest.fixture(scope="module")
def io(fixtures_dir: Path) -> dict[str, np.ndarray]:
    with np.load(fixtures_dir / "patch_classifier_io.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def classifier(fixtures_dir: Path, summary) -> DenseNet:
    hp = summary["hyperparameters"]
    model = DenseNet(DenseNetConfig(num_classes=hp["number_of_classes"],
                                    input_channels=hp["input_channels"],
                                    patch_size=hp["patch_size"]))
    load_state(model, read_state_dict(fixtures_dir / summary["weights"]), "fixture patch model")
    return model.eval()


@pytest.fixture(scope="module")
def fixture_output(classifier, io) -> PatchOutput:
    patches = torch.from_numpy(io["patches_fp16"].astype(np.float32))[:, None]
    with torch.inference_mode():
        return classifier(patches.expand(-1, 3, -1, -1))  # replicated to 3 channels


def test_state_dict_has_the_torchvision_layout_and_size(fixtures_dir, summary):
    items = json.loads((fixtures_dir / "keys_patch_densenet121.json").read_text())
    model = DenseNet()
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == [
        (i["key"], tuple(i["shape"])) for i in items]
    assert sum(p.numel() for p in model.parameters()) == summary["n_params"]


def test_logits_match_the_reference(fixture_output, io):
    np.testing.assert_allclose(fixture_output.logits.numpy(), io["logits"], atol=LOGIT_ATOL,
                               rtol=1e-3)


def test_softmax_matches_the_reference(fixture_output, io, summary):
    np.testing.assert_allclose(fixture_output.probabilities.numpy(), io["softmax"],
                               atol=PROBABILITY_ATOL)
    np.testing.assert_allclose(fixture_output.probabilities.numpy(), summary["softmax"],
                               atol=PROBABILITY_ATOL)


def test_heatmap_columns_are_the_ones_the_reference_names(fixture_output, summary):
    heatmap_type = summary["hyperparameters"]["heatmap_type"]
    assert (heatmap_type["malignant"], heatmap_type["benign"]) == (MALIGNANT_COLUMN,
                                                                   BENIGN_COLUMN)
    probabilities = fixture_output.probabilities
    assert torch.equal(fixture_output.malignant, probabilities[:, heatmap_type["malignant"]])
    assert torch.equal(fixture_output.benign, probabilities[:, heatmap_type["benign"]])


def test_a_single_channel_patch_is_replicated_to_three_channels(classifier, io, fixture_output):
    grey = torch.from_numpy(io["patches_fp16"][:2].astype(np.float32))[:, None]
    with torch.inference_mode():
        out = classifier(grey)
    torch.testing.assert_close(out.logits, fixture_output.logits[:2], atol=1e-6, rtol=0)
    with pytest.raises(ModelError, match="expects"):
        classifier(torch.zeros(1, 2, 256, 256))


@pytest.mark.parametrize("length", [1, 2, 3, 63, 64, 65, 127, 128, 255, 256, 257])
@pytest.mark.parametrize("kernel,stride", [(7, 2), (3, 2), (3, 1), (1, 1)])
def test_same_padding_keeps_ceil_length_over_stride(length, kernel, stride):
    before, after = same_padding(length, kernel, stride)
    assert 0 <= after - before <= 1  # the extra pixel goes after (bottom/right)
    out = (length + before + after - kernel) // stride + 1
    assert out == -(-length // stride)  # TF "SAME": ceil(n / s) outputs


def test_stem_pads_asymmetrically_on_a_256_patch():
    conv = SameConv2d(1, 1, 7, stride=2)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    x = torch.ones(1, 1, 256, 256)
    out = conv(x)
    assert out.shape[2:] == (128, 128)
    # pad 2 before and 3 after: the first window sees 5 of its 7 rows (and columns), the
    # last one 4 (rows 252..255 of the image)
    assert out[0, 0, 0, 0].item() == 25.0
    assert out[0, 0, -1, -1].item() == 16.0
    pooled = SameMaxPool2d(3, 2)(-torch.ones(1, 1, 128, 128))
    assert pooled.shape[2:] == (64, 64)
    assert pooled[0, 0, -1, -1].item() == 0.0  # zero padding after, none before
    assert pooled[0, 0, 0, 0].item() == -1.0


def test_non_square_inputs_swap_the_axes_of_the_padding_like_the_reference():
    x = torch.ones(1, 1, 9, 8)  # height 9 (odd), width 8 (even), kernel 3, stride 2
    swapped = SameConv2d(1, 1, 3, stride=2)
    straight = SameConv2d(1, 1, 3, stride=2, swap_axes=False)
    with torch.no_grad():
        swapped.weight.fill_(1.0)
        straight.weight.fill_(1.0)
    # height 9 needs 2 (1+1), width 8 needs 1 (0+1); the reference applies them crosswise
    assert straight(x).shape[2:] == (5, 4)
    assert swapped(x).shape[2:] == (4, 4)
