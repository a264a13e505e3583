"""The DMV-CNN patch classifier: DenseNet-121 (Huang et al. 2017) with TF-"SAME" padding.

Wu et al. 2019 (section IV-B) classify 256x256 patches into four classes with a DenseNet-121
whose weights were initialised from ImageNet; the published ``sample_patch_model.p`` is a
``densenet121(num_classes=4)`` state_dict in the widespread (torchvision) key layout:
``features.{conv0,norm0}``, ``features.denseblock<b>.denselayer<l>.{norm1,conv1,norm2,conv2}``,
``features.transition<b>.{norm,conv}``, ``features.norm5``, ``classifier``.

Architecture (DenseNet-BC, from the paper): a 7x7 stride-2 convolution with 64 filters,
BatchNorm, ReLU, 3x3 stride-2 max pool; four dense blocks of (6, 12, 24, 16) layers, each
layer ``BN-ReLU-conv1x1(4k)-BN-ReLU-conv3x3(k)`` with growth rate k = 32, its output
concatenated to its input; between blocks a transition ``BN-ReLU-conv1x1`` halving the
channels and a 2x2 stride-2 average pool; then BN, ReLU, global average pooling and a
linear classifier (1024 → 4). No bias in any convolution.

Padding (fixtures README, ``patch_classifier_summary.json``): every Conv2d and MaxPool2d is
wrapped with TensorFlow "SAME" padding computed from the input size, and its own padding set
to 0: along an axis of length n, ``total = max(0, k - s)`` if ``n % s == 0`` else
``max(0, k - n % s)``; ``total // 2`` before, the rest after; zeros (also for the max pool,
whose input is non-negative after ReLU). The reference passes the padding computed from the
height to the width axis and vice versa; that is reproduced (``swap_same_axes=True``) and
is invisible for the square patches the model sees. The transition average pools are not
wrapped.

Outputs: logits (N, 4) and their softmax; column 0 is the malignant heatmap's class,
column 1 the benign one. A single-channel input is repeated to the 3 input channels, as the
reference does with its standardised grey-level patches.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from triage.errors import ModelError

#: Softmax columns that become the heatmaps.
MALIGNANT_COLUMN = 0
BENIGN_COLUMN = 1


@dataclass(frozen=True)
class DenseNetConfig:
    """Hyper-parameters of the patch classifier (defaults: DenseNet-121, 4 classes)."""

    num_classes: int = 4
    input_channels: int = 3
    growth_rate: int = 32
    block_config: tuple[int, ...] = (6, 12, 24, 16)
    num_init_features: int = 64
    bn_size: int = 4
    patch_size: int = 256  # what the model was trained on; forward accepts any size
    swap_same_axes: bool = True  # the reference's height/width swap of the SAME padding

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise ModelError(f"the patch classifier needs at least 2 classes, "
                             f"got {self.num_classes}")
        if not self.block_config or min(self.block_config) < 1:
            raise ModelError(f"invalid DenseNet block_config {self.block_config}")


def channels_last_weights(module: nn.Module) -> None:
    """Store the module's 4-D (convolution) weights in NHWC layout, in place.

    Convolutions then run channels-last whatever the input layout (oneDNN on the CPU was
    measured ~1.4-1.6x faster so, see benchmarks/dmv.py); ``load_state_dict`` copies into
    these tensors and keeps the layout. Numerically the same model.
    """
    with torch.no_grad():
        for param in module.parameters():
            if param.dim() == 4:
                param.data = param.data.contiguous(memory_format=torch.channels_last)


def same_padding(length: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "SAME" padding (before, after) of one axis of ``length``."""
    remainder = length % stride
    total = max(0, kernel - stride) if remainder == 0 else max(0, kernel - remainder)
    return total // 2, total - total // 2


def _same_pads(x: Tensor, kernel: tuple[int, int], stride: tuple[int, int],
               swap: bool) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) for ``F.pad``."""
    top_bottom = same_padding(int(x.shape[-2]), kernel[0], stride[0])
    left_right = same_padding(int(x.shape[-1]), kernel[1], stride[1])
    if swap:
        top_bottom, left_right = left_right, top_bottom
    return (*left_right, *top_bottom)


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    return int(value[0]), int(value[-1])


class SameConv2d(nn.Conv2d):
    """A bias-free Conv2d (key ``weight``) padded TF-"SAME" for its input size."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 stride: int = 1, swap_axes: bool = True) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0,
                         bias=False)
        self.swap_axes = swap_axes

    def forward(self, x: Tensor) -> Tensor:
        left, right, top, bottom = _same_pads(x, _pair(self.kernel_size), _pair(self.stride),
                                              self.swap_axes)
        if left == right and top == bottom:  # symmetric: let the convolution pad
            return F.conv2d(x, self.weight, None, self.stride, (top, left))
        return F.conv2d(F.pad(x, (left, right, top, bottom)), self.weight, None, self.stride)


class SameMaxPool2d(nn.Module):
    """Max pool with TF-"SAME" zero padding for its input size."""

    def __init__(self, kernel_size: int, stride: int, swap_axes: bool = True) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride
        self.swap_axes = swap_axes

    def forward(self, x: Tensor) -> Tensor:
        k, s = self.kernel_size, self.stride
        pads = _same_pads(x, (k, k), (s, s), self.swap_axes)
        return F.max_pool2d(F.pad(x, pads), k, s)


class DenseLayer(nn.Module):
    """BN-ReLU-conv1x1(bn_size*k)-BN-ReLU-conv3x3(k) on the concatenation of its inputs."""

    def __init__(self, in_channels: int, growth_rate: int, bn_size: int, swap: bool) -> None:
        super().__init__()
        width = bn_size * growth_rate
        self.norm1 = nn.BatchNorm2d(in_channels)
        self.conv1 = SameConv2d(in_channels, width, 1, swap_axes=swap)
        self.norm2 = nn.BatchNorm2d(width)
        self.conv2 = SameConv2d(width, growth_rate, 3, swap_axes=swap)

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:
        x = torch.cat(list(inputs), dim=1) if len(inputs) > 1 else inputs[0]
        out = self.conv1(torch.relu_(self.norm1(x)))
        return self.conv2(torch.relu_(self.norm2(out)))


class DenseBlock(nn.ModuleDict):
    """``denselayer1..n``; returns its input with every layer's output appended."""

    def __init__(self, layers: int, in_channels: int, growth_rate: int, bn_size: int,
                 swap: bool) -> None:
        super().__init__()
        for index in range(layers):
            self[f"denselayer{index + 1}"] = DenseLayer(
                in_channels + index * growth_rate, growth_rate, bn_size, swap)
        self.out_channels = in_channels + layers * growth_rate

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, dim=1)


class Transition(nn.Module):
    """BN-ReLU-conv1x1 then a (not SAME-padded) 2x2 stride-2 average pool."""

    def __init__(self, in_channels: int, out_channels: int, swap: bool) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(in_channels)
        self.conv = SameConv2d(in_channels, out_channels, 1, swap_axes=swap)
        self.pool = nn.AvgPool2d(2, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.conv(torch.relu_(self.norm(x))))


class PatchOutput(NamedTuple):
    """``logits`` (N, classes) and ``probabilities`` = softmax (float32)."""

    logits: Tensor
    probabilities: Tensor

    @property
    def malignant(self) -> Tensor:
        return self.probabilities[:, MALIGNANT_COLUMN]

    @property
    def benign(self) -> Tensor:
        return self.probabilities[:, BENIGN_COLUMN]


class DenseNet(nn.Module):
    """DenseNet-BC patch classifier; ``state_dict`` in the torchvision layout."""

    def __init__(self, config: DenseNetConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or DenseNetConfig()
        swap = c.swap_same_axes
        stem: OrderedDict[str, nn.Module] = OrderedDict(
            conv0=SameConv2d(c.input_channels, c.num_init_features, 7, stride=2,
                             swap_axes=swap),
            norm0=nn.BatchNorm2d(c.num_init_features),
            relu0=nn.ReLU(inplace=True),
            pool0=SameMaxPool2d(3, 2, swap_axes=swap),
        )
        self.features = nn.Sequential(stem)
        channels = c.num_init_features
        for index, layers in enumerate(c.block_config, start=1):
            block = DenseBlock(layers, channels, c.growth_rate, c.bn_size, swap)
            self.features.add_module(f"denseblock{index}", block)
            channels = block.out_channels
            if index < len(c.block_config):
                self.features.add_module(f"transition{index}",
                                         Transition(channels, channels // 2, swap))
                channels //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(channels))
        self.classifier = nn.Linear(channels, c.num_classes)
        self.num_features = channels
        channels_last_weights(self)

    def forward(self, x: Tensor) -> PatchOutput:
        if x.dim() != 4 or x.shape[1] not in (1, self.config.input_channels):
            raise ModelError(
                f"the patch classifier expects (N, 1 or {self.config.input_channels}, H, W), "
                f"got {tuple(x.shape)}"
            )
        if x.shape[1] != self.config.input_channels:  # grey-level patch → 3 equal channels
            x = x.expand(-1, self.config.input_channels, -1, -1).contiguous()
        features = torch.relu_(self.features(x))
        pooled = features.mean(dim=(2, 3))
        with torch.autocast(device_type=x.device.type, enabled=False):
            logits = self.classifier(pooled.float())
            probabilities = torch.softmax(logits, dim=1)
        return PatchOutput(logits=logits, probabilities=probabilities)


def build_patch_classifier(config: DenseNetConfig) -> nn.Module:
    """The registry builder."""
    return DenseNet(config)
