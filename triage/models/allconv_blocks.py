"""Layers of the all-convolutional whole-image classifiers (Shen et al. 2019).

The paper's patch classifiers are the ImageNet ResNet-50 and VGG-16 (without their FC
layers), and its top layers are "Resnet blocks" and "VGG blocks" (section "Network
design"). The layers here are written so that the authors' Keras 2 models map onto them
one to one (:mod:`triage.models.keras_convert`):

* every convolution has a bias (Keras ``Conv2D`` default ``use_bias=True``), also where a
  batch normalisation follows;
* batch normalisation uses Keras' default epsilon ``1e-3`` (PyTorch's default is 1e-5);
  with converted weights the difference is visible, so it is fixed here;
* a bottleneck unit ``[L-M-N]`` (the paper's pattern) is 1x1 (L, stride s) → BN → ReLU →
  3x3 (M) → BN → ReLU → 1x1 (N) → BN, plus the shortcut, then ReLU (post-activation, the
  original ResNet). The stride sits on the first 1x1 convolution, as in the Keras ResNet-50
  the paper started from (not on the 3x3: the "v1.5" variant of :mod:`blocks`). The first
  unit of a stage has a 1x1 projection shortcut (stride s) followed by BN; the others are
  identity;
* ResNet-50 stem: 7x7 stride-2 convolution with 3 pixels of zero padding, BN, ReLU, 3x3
  stride-2 max pooling without padding (Keras ``MaxPooling2D`` default ``valid``);
* a VGG block ``N x K`` is K times (3x3 convolution with N filters, padding 1 [+ BN], ReLU)
  followed by 2x2 stride-2 max pooling (floor). The VGG-16 patch classifier has no BN
  ("a pre-trained network which cannot be modified"); the VGG top blocks do ("BN was used
  for the VGG blocks on the top").

All paddings are symmetric, which is what Keras ``same`` gives for every layer used here
(3x3 stride 1, and 1x1 at any stride), so converted weights give the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from triage.errors import ModelError

#: Keras ``BatchNormalization`` default epsilon.
KERAS_BN_EPS = 1e-3


def keras_bn(channels: int) -> nn.BatchNorm2d:
    """BatchNorm2d with Keras' default epsilon (1e-3)."""
    return nn.BatchNorm2d(channels, eps=KERAS_BN_EPS)


class Bottleneck(nn.Module):
    """One ``[L-M-N]`` residual unit (post-activation, stride on the first 1x1)."""

    def __init__(self, in_channels: int, depths: tuple[int, int, int], stride: int,
                 project: bool) -> None:
        super().__init__()
        low, mid, out = depths
        if not project and (stride != 1 or in_channels != out):
            raise ModelError("a residual unit that changes shape needs a projection shortcut")
        self.conv1 = nn.Conv2d(in_channels, low, 1, stride=stride)
        self.bn1 = keras_bn(low)
        self.conv2 = nn.Conv2d(low, mid, 3, padding=1)
        self.bn2 = keras_bn(mid)
        self.conv3 = nn.Conv2d(mid, out, 1)
        self.bn3 = keras_bn(out)
        self.downsample: nn.Sequential | None = (
            nn.Sequential(nn.Conv2d(in_channels, out, 1, stride=stride), keras_bn(out))
            if project else None
        )

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = self.downsample(x) if self.downsample is not None else x
        return torch.relu(out + shortcut)


def residual_stage(in_channels: int, depths: tuple[int, int, int], units: int,
                   stride: int) -> nn.Sequential:
    """A "Resnet block" ``[L-M-N] x K``: the first unit strides and projects."""
    layers = [Bottleneck(in_channels, depths, stride, project=True)]
    layers += [Bottleneck(depths[2], depths, 1, project=False) for _ in range(units - 1)]
    return nn.Sequential(*layers)


class ConvUnit(nn.Module):
    """3x3 convolution (padding 1, bias) [+ BN] + ReLU; ``bn`` is ``None`` without BN."""

    def __init__(self, in_channels: int, out_channels: int, batch_norm: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.bn: nn.BatchNorm2d | None = keras_bn(out_channels) if batch_norm else None

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        if self.bn is not None:
            out = self.bn(out)
        return torch.relu(out)


class VGGBlock(nn.Module):
    """A "VGG block" ``N x K``: K convolution units, then 2x2 stride-2 max pooling."""

    def __init__(self, in_channels: int, depth: int, units: int, batch_norm: bool) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            ConvUnit(in_channels if i == 0 else depth, depth, batch_norm) for i in range(units))
        self.pool = nn.MaxPool2d(2, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.pool(x)


# ---------------------------------------------------------------------------
# patch-classifier trunks (the convolutional layers of the patch classifier f)
# ---------------------------------------------------------------------------
#: (L, M, N) and units of the four ResNet-50 stages; Keras names them stages 2..5.
RESNET50_STAGES: tuple[tuple[tuple[int, int, int], int], ...] = (
    ((64, 64, 256), 3), ((128, 128, 512), 4), ((256, 256, 1024), 6), ((512, 512, 2048), 3),
)
#: (filters, convolutions) of the five VGG-16 blocks.
VGG16_BLOCKS: tuple[tuple[int, int], ...] = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))


def _conv_size(n: int, kernel: int, stride: int, padding: int) -> int:
    return (n + 2 * padding - kernel) // stride + 1


class ResNet50Trunk(nn.Module):
    """ResNet-50 up to the ReLU after stage 5: ``(N, 3, H, W) -> (N, 2048, ~H/32, ~W/32)``.

    Keys: ``conv1``, ``bn1``, ``layer1..4.<unit>.{conv1,bn1,conv2,bn2,conv3,bn3}`` and
    ``layer<k>.0.downsample.{0,1}``.
    """

    out_channels = 2048

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3)
        self.bn1 = keras_bn(64)
        self.maxpool = nn.MaxPool2d(3, stride=2)
        channels = 64
        stages = []
        for index, (depths, units) in enumerate(RESNET50_STAGES):
            stages.append(residual_stage(channels, depths, units, 1 if index == 0 else 2))
            channels = depths[2]
        self.layer1, self.layer2, self.layer3, self.layer4 = stages

    def forward(self, x: Tensor) -> Tensor:
        out = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(out))))

    @staticmethod
    def output_size(n: int) -> int:
        n = _conv_size(_conv_size(n, 7, 2, 3), 3, 2, 0)
        for _ in range(3):  # stages 3..5: 1x1 stride 2
            n = _conv_size(n, 1, 2, 0)
        return n


class VGG16Trunk(nn.Module):
    """VGG-16's five blocks, each ending in its max pooling (no BN):
    ``(N, 3, H, W) -> (N, 512, H//32, W//32)``. Keys ``blocks.<b>.layers.<k>.conv``."""

    out_channels = 512

    def __init__(self) -> None:
        super().__init__()
        blocks = []
        channels = 3
        for depth, units in VGG16_BLOCKS:
            blocks.append(VGGBlock(channels, depth, units, batch_norm=False))
            channels = depth
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return x

    @staticmethod
    def output_size(n: int) -> int:
        for _ in VGG16_BLOCKS:
            n //= 2
        return n


PatchNet = Literal["resnet50", "vgg16"]
PATCH_NETS: tuple[str, ...] = ("resnet50", "vgg16")


def build_trunk(patch_net: str) -> ResNet50Trunk | VGG16Trunk:
    if patch_net == "resnet50":
        return ResNet50Trunk()
    if patch_net == "vgg16":
        return VGG16Trunk()
    raise ModelError(f"unknown patch classifier {patch_net!r}; use one of {PATCH_NETS}")


def trunk_output_size(patch_net: str, n: int) -> int:
    return (ResNet50Trunk if patch_net == "resnet50" else VGG16Trunk).output_size(n)


# ---------------------------------------------------------------------------
# top blocks (the function g of the paper)
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class TopBlock:
    """One top block in the paper's notation: ``resnet`` ``[L-M-N] x K`` (depths (L, M, N))
    or ``vgg`` ``N x K`` (depths (N,)); ``units`` is K."""

    kind: Literal["resnet", "vgg"]
    depths: tuple[int, ...]
    units: int

    def __post_init__(self) -> None:
        wanted = {"resnet": 3, "vgg": 1}.get(self.kind)
        if wanted is None:
            raise ModelError(f"top block kind must be 'resnet' or 'vgg', got {self.kind!r}")
        if len(self.depths) != wanted or min(self.depths) < 1 or self.units < 1:
            raise ModelError(f"invalid {self.kind} top block {self.depths} x {self.units}")

    @property
    def label(self) -> str:
        if self.kind == "resnet":
            return f"[{'-'.join(str(d) for d in self.depths)}]x{self.units}"
        return f"{self.depths[0]}x{self.units}"

    @property
    def out_channels(self) -> int:
        return self.depths[-1]

    def build(self, in_channels: int) -> nn.Module:
        if self.kind == "resnet":
            low, mid, out = self.depths
            return residual_stage(in_channels, (low, mid, out), self.units, stride=2)
        return VGGBlock(in_channels, self.depths[0], self.units, batch_norm=True)

    def output_size(self, n: int) -> int:
        return _conv_size(n, 1, 2, 0) if self.kind == "resnet" else n // 2


def resnet_top(depths: tuple[int, int, int], units: int) -> TopBlock:
    return TopBlock("resnet", depths, units)


def vgg_top(depth: int, units: int) -> TopBlock:
    return TopBlock("vgg", (depth,), units)


def feature_size(patch_net: str, top: Sequence[TopBlock], input_hw: tuple[int, int]
                 ) -> tuple[int, int]:
    """Size ``(h, w)`` of the last feature map (the one that is average-pooled)."""
    sizes = []
    for n in input_hw:
        n = trunk_output_size(patch_net, n)
        for block in top:
            n = block.output_size(n) if n > 0 else 0
        sizes.append(n)
    return sizes[0], sizes[1]
