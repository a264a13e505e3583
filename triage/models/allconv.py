"""End-to-end all-convolutional whole-image classifier (Shen et al. 2019, Sci Rep 9:12495).

From the paper ("Methods", "Network design", "Converting patch to whole image
classifiers"):

* the patch classifier ``f`` is ResNet-50 or VGG-16 with its FC layers replaced by global
  average pooling and one FC layer to 5 patch classes (:class:`PatchClassifier`);
* the whole-image classifier ``h(M) = g(f(M))`` keeps the patch classifier's convolutional
  layers, drops the heatmap (the paper's best design), adds two top blocks, then global
  average pooling and the image-level output (:class:`AllConvClassifier`). The paper's four
  best models, which it averages into its ensemble: Resnet-Resnet (ResNet-50 + two
  ``[512-512-1024] x 2`` Resnet blocks), VGG-VGG (VGG-16 + VGG blocks ``256 x 1`` and
  ``128 x 1``), and the hybrids Resnet-VGG (ResNet-50 + those VGG blocks) and VGG-Resnet
  (VGG-16 + those Resnet blocks); see ``allconv_specs``;
* input: the whole mammogram, uncropped, downsized to 1152x896 (height x width), grey
  values minus the training set's mean grey value, no other preprocessing;
* image classes ``d = 2``: "malignant and nonmalignant (benign or normal)";
* augmented prediction: the mean of the scores of the image and its horizontal, vertical
  and horizontal+vertical flips (done by the pipeline, :mod:`triage.pipeline.allconv`;
  this module stays a pure function of its input).

Choices the paper leaves open, taken here (most from the authors' public repository
``lishen/end2end-all-conv``, so that its published Keras models convert one to one; see
:mod:`triage.models.allconv_blocks` for the layer-level ones):

* the output is a 2-way softmax, index 0 non-malignant, index 1 malignant (the authors'
  class list ``neg pos``); ``p_malignant`` is softmax column 1;
* the model takes one grey channel and repeats it to the 3 input channels of the ImageNet
  patch classifiers (the authors duplicate the grey image into 3 channels);
* the ResNet-50 trunk ends after the ReLU of its last stage (a 2048-channel map, stride
  32); the VGG-16 trunk after the max pooling of its fifth block (the paper: "the output
  of the last VGG block has a size of 7x7x512" for a 224x224 patch);
* each top block halves the map: a Resnet block by the stride 2 of its first unit, a VGG
  block by its final max pooling. At 1152x896 the last map is 9x7 for every configuration;
  inputs must be large enough that it is at least 1x1 (e.g. 128x128 for the VGG tops);
* 5 patch classes in the order background, benign calcification, malignant calcification,
  benign mass, malignant mass (the alphabetical order of the authors' patch folders); only
  the patch classifier uses them, the whole-image model has no heatmap;
* no dropout (the authors trained the published models with dropout 0), no activation
  between the trunk and the top blocks other than the trunk's own last ReLU / pooling;
* weight initialisation (used for untrained and demo weights only): He-normal convolution
  and FC kernels with zero biases (Keras' ``he_normal`` of the authors' top layers), BN
  weight 1 and bias 0.

Class activation map (not in the paper, which shows guided back-propagation saliency):
because the output is one FC layer on globally averaged features, the per-cell malignant
logit difference ``m(i, j) = (w_1 - w_0) . F(i, j) + (b_1 - b_0)`` of the last feature map
``F`` averages exactly to the image's logit difference, so ``sigmoid(mean(m)) =
p_malignant``. :attr:`AllConvOutput.saliency` is ``sigmoid(m)`` per cell, in [0, 1]: the
malignant probability an image made entirely of that cell's features would get. It is a
coarse map (9x7 at 1152x896) spanning the whole input. There is no benign map: the model
has no benign output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from triage.errors import ModelError
from triage.models.allconv_blocks import (
    PATCH_NETS,
    TopBlock,
    build_trunk,
    feature_size,
    resnet_top,
    vgg_top,
)

#: The paper's input size (height, width) and the authors' DDSM training-set mean grey
#: value on the 0-255 scale (their training script's default ``featurewise_mean``; the
#: paper says only "the average gray scale value of the whole image training set").
ALLCONV_INPUT_SIZE: tuple[int, int] = (1152, 896)
DDSM_PIXEL_MEAN = 52.16

PATCH_CLASSES: tuple[str, ...] = ("background", "benign_calcification",
                                  "malignant_calcification", "benign_mass", "malignant_mass")
IMAGE_CLASSES: tuple[str, ...] = ("non-malignant", "malignant")
MALIGNANT = 1

#: The paper's best top layers.
RESNET_TOP: tuple[TopBlock, ...] = (resnet_top((512, 512, 1024), 2),
                                    resnet_top((512, 512, 1024), 2))
VGG_TOP: tuple[TopBlock, ...] = (vgg_top(256, 1), vgg_top(128, 1))


@dataclass(frozen=True)
class AllConvConfig:
    """One whole-image configuration: patch classifier, top blocks, input and its mean.

    ``pixel_mean`` belongs to the weights (the mean of the set they were trained on); the
    pipeline subtracts it from the 0-255 input. ``input_shape`` is informative: the model
    runs at any size large enough for its strides.
    """

    patch_net: str = "resnet50"
    top: tuple[TopBlock, ...] = RESNET_TOP
    num_classes: int = 2
    input_shape: tuple[int, int] = ALLCONV_INPUT_SIZE
    pixel_mean: float = DDSM_PIXEL_MEAN

    def __post_init__(self) -> None:
        if self.patch_net not in PATCH_NETS:
            raise ModelError(f"unknown patch classifier {self.patch_net!r}; use one of "
                             f"{PATCH_NETS}")
        if not self.top:
            raise ModelError("an all-convolutional whole-image model needs top blocks")
        if self.num_classes != len(IMAGE_CLASSES):
            raise ModelError(f"the whole-image output has {len(IMAGE_CLASSES)} classes "
                             f"{IMAGE_CLASSES}, got num_classes={self.num_classes}")

    @property
    def label(self) -> str:
        trunk = {"resnet50": "ResNet-50", "vgg16": "VGG-16"}[self.patch_net]
        return f"{trunk} + " + " + ".join(f"{b.kind} {b.label}" for b in self.top)


class AllConvOutput(NamedTuple):
    """One forward pass, batched over N images.

    ``logits`` and ``probabilities`` (N, 2): softmax over (non-malignant, malignant);
    ``malignant_map`` (N, h, w): the per-cell malignant logit difference of the last
    feature map (its spatial mean is ``logits[:, 1] - logits[:, 0]``); ``saliency``
    (N, h, w): ``sigmoid(malignant_map)`` (module docstring). All float32.
    """

    logits: Tensor
    probabilities: Tensor
    malignant_map: Tensor
    saliency: Tensor

    @property
    def p_malignant(self) -> Tensor:
        return self.probabilities[:, MALIGNANT]


class PatchOutput(NamedTuple):
    """Patch classifier output: ``logits`` and softmax ``probabilities`` (N, 5) over
    :data:`PATCH_CLASSES`."""

    logits: Tensor
    probabilities: Tensor


def _he_init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _three_channels(x: Tensor, what: str) -> Tensor:
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ModelError(f"{what} expects input (N, 1, H, W) or (N, 3, H, W), got "
                         f"{tuple(x.shape)}")
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


class PatchClassifier(nn.Module):
    """The paper's patch classifier ``f``: trunk, global average pooling, FC to 5 classes.

    Its ``patch.*`` weights are what a whole-image model starts from (same keys).
    """

    def __init__(self, patch_net: str = "resnet50") -> None:
        super().__init__()
        self.patch = build_trunk(patch_net)
        self.fc = nn.Linear(self.patch.out_channels, len(PATCH_CLASSES))
        _he_init(self)

    def forward(self, x: Tensor) -> PatchOutput:
        features = self.patch(_three_channels(x, "the patch classifier"))
        logits = self.fc(features.mean(dim=(2, 3)))
        return PatchOutput(logits=logits, probabilities=torch.softmax(logits, dim=1))


class AllConvClassifier(nn.Module):
    """Whole-image classifier ``h = g o f`` without heatmap (keys ``patch``, ``top``, ``fc``)."""

    def __init__(self, config: AllConvConfig | None = None) -> None:
        super().__init__()
        self.config = config or AllConvConfig()
        c = self.config
        self.patch = build_trunk(c.patch_net)
        blocks = []
        channels = self.patch.out_channels
        for block in c.top:
            blocks.append(block.build(channels))
            channels = block.out_channels
        self.top = nn.Sequential(*blocks)
        self.fc = nn.Linear(channels, c.num_classes)
        _he_init(self)

    def feature_shape(self, input_hw: tuple[int, int]) -> tuple[int, int]:
        """Size of the last feature map (the CAM / saliency grid) for an input size."""
        return feature_size(self.config.patch_net, self.config.top, input_hw)

    def forward(self, x: Tensor) -> AllConvOutput:
        x = _three_channels(x, "the all-convolutional model")
        hw = self.feature_shape((int(x.shape[2]), int(x.shape[3])))
        if min(hw) < 1:
            raise ModelError(f"input {tuple(x.shape[2:])} is too small for "
                             f"{self.config.label}: its last feature map would be {hw}")
        features = self.top(self.patch(x))
        with torch.autocast(device_type=x.device.type, enabled=False):
            f32 = features.float()
            logits = self.fc(f32.mean(dim=(2, 3)))
            weight, bias = self.fc.weight.float(), self.fc.bias.float()
            diff = weight[MALIGNANT] - weight[1 - MALIGNANT]
            malignant_map = (torch.einsum("nchw,c->nhw", f32, diff)
                             + (bias[MALIGNANT] - bias[1 - MALIGNANT]))
            return AllConvOutput(logits=logits, probabilities=torch.softmax(logits, dim=1),
                                 malignant_map=malignant_map,
                                 saliency=torch.sigmoid(malignant_map))
