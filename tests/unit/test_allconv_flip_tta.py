"""The paper's flip averaging (4 flips) and the whole-image preprocessing of the all-conv
members."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from triage.errors import PreprocessingError
from triage.imaging.whole_image import prepare_whole_image
from triage.models.allconv import RESNET_TOP, AllConvClassifier, AllConvConfig
from triage.outputs.overlay import saliency_on_source
from triage.pipeline.allconv import flip_averaged, flip_variants
from triage.vocabulary import Laterality, View


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
