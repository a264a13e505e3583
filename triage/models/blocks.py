"""Residual network building blocks shared by the models of the papers.

Two families, with attribute names chosen so that ``state_dict`` keys match the
published checkpoints:

* :class:`ResNetV2` — the "ResNet-22" of Wu et al. 2019 (DMV-CNN) that GMIC and
  3D-GMIC reuse as their global network: a 7x7 stride-2 convolution with 16 filters,
  a 3x3 stride-2 max pool, then ``len(blocks)`` stages of pre-activation residual
  blocks (He et al. 2016, "Identity mappings", full pre-activation) whose width doubles
  per stage, then a final normalisation + ReLU. Keys: ``first_conv``,
  ``layer_list.<stage>.<block>.{bn1,conv1,bn2,conv2,downsample.0}``, ``final_bn``.
  The normalisation is configurable (BatchNorm for GMIC/DMV-CNN, GroupNorm(8) for 3D-GMIC);
  whatever it is, its parameters keep the ``bn1``/``bn2``/``final_bn`` names.
* :class:`ResNetV1` — the canonical ImageNet-style ResNet (He et al. 2016a) used as the
  GMIC local network (ResNet-18/34 with basic blocks, ResNet-50 with bottlenecks), without
  its classification layer: the output is the globally average-pooled feature vector.
  Keys follow the common layout ``conv1``, ``bn1``, ``layer1..4.<block>.{conv1,bn1,...}``,
  ``downsample.{0,1}``.

Choices the papers leave open and the fixtures settle (checked by the GMIC reference test):
the first convolution has padding 3 and no bias, the 3x3 stride-2 max pool has no padding
(the GMIC reference output is reproduced only without it), a stage's
first block always has a 1x1 projection shortcut (even when the shape does not change),
and that projection reads the pre-activated input (after ``bn1`` + ReLU), as in the
pre-activation paper. DMV-CNN's ResNet-22 columns differ in one respect: their first
convolution has no padding (``first_padding=0``; the DMV-CNN fixture outputs are reproduced
only so, although the paper's Table II sizes imply padding 3). ResNet-50 puts the stride
on the 3x3 convolution of the bottleneck (the widespread "v1.5" variant); no published
checkpoint pins this down.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

#: Builds a normalisation layer for a number of channels.
NormFactory = Callable[[int], nn.Module]


def batch_norm(num_channels: int) -> nn.Module:
    """BatchNorm2d with PyTorch defaults (eps 1e-5, running statistics)."""
    return nn.BatchNorm2d(num_channels)


def group_norm(num_groups: int) -> NormFactory:
    """A factory of GroupNorm layers with ``num_groups`` groups (3D-GMIC uses 8)."""

    def make(num_channels: int) -> nn.Module:
        return nn.GroupNorm(num_groups, num_channels)

    return make


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


# ---------------------------------------------------------------------------
# ResNet v2 (pre-activation), the "ResNet-22" global network
# ---------------------------------------------------------------------------
class PreActBasicBlock(nn.Module):
    """norm → ReLU → conv3x3(stride) → norm → ReLU → conv3x3, plus the shortcut.

    With ``project=True`` the shortcut is a 1x1 convolution (stride ``stride``) applied to
    the pre-activated input; otherwise it is the identity.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, project: bool,
                 norm: NormFactory) -> None:
        super().__init__()
        if not project and (stride != 1 or in_channels != out_channels):
            raise ValueError("a block that changes shape needs a projection shortcut")
        self.bn1 = norm(in_channels)
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn2 = norm(out_channels)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.downsample: nn.Sequential | None = (
            nn.Sequential(conv1x1(in_channels, out_channels, stride)) if project else None
        )

    def forward(self, x: Tensor) -> Tensor:
        pre = torch.relu(self.bn1(x))
        shortcut = self.downsample(pre) if self.downsample is not None else x
        out = self.conv1(pre)
        out = self.conv2(torch.relu(self.bn2(out)))
        return out + shortcut


class ResNetV2(nn.Module):
    """Pre-activation ResNet returning the final feature map ``(N, C_last, h, w)``.

    Defaults give ResNet-22: 16 filters, blocks [2,2,2,2,2], strides [1,2,2,2,2], so a
    2944x1920 input yields a 256x46x30 map (overall stride 64).
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_filters: int = 16,
        blocks: Sequence[int] = (2, 2, 2, 2, 2),
        strides: Sequence[int] = (1, 2, 2, 2, 2),
        growth_factor: int = 2,
        norm: NormFactory = batch_norm,
        first_kernel: int = 7,
        first_stride: int = 2,
        first_pool: bool = True,
        first_pool_padding: int = 0,
        first_padding: int | None = None,
    ) -> None:
        super().__init__()
        if len(blocks) != len(strides):
            raise ValueError("blocks and strides must have the same length")
        # padding of the first convolution: kernel // 2 (GMIC) unless given (DMV-CNN: 0)
        pad = first_kernel // 2 if first_padding is None else first_padding
        self.first_conv = nn.Conv2d(in_channels, num_filters, first_kernel, stride=first_stride,
                                    padding=pad, bias=False)
        self.first_pool: nn.Module = (
            nn.MaxPool2d(3, stride=2, padding=first_pool_padding) if first_pool else nn.Identity()
        )
        stages: list[nn.Module] = []
        channels = num_filters
        width = num_filters
        for n_blocks, stride in zip(blocks, strides, strict=True):
            stage = [PreActBasicBlock(channels, width, stride, project=True, norm=norm)]
            stage += [PreActBasicBlock(width, width, 1, project=False, norm=norm)
                      for _ in range(n_blocks - 1)]
            stages.append(nn.Sequential(*stage))
            channels = width
            width *= growth_factor
        self.layer_list = nn.ModuleList(stages)
        self.final_bn = norm(channels)
        self.out_channels = channels
        # (kernel, stride, padding) of every resolution-changing step, for output_shape
        self._geometry: list[tuple[int, int, int]] = [(first_kernel, first_stride, pad)]
        if first_pool:
            self._geometry.append((3, 2, first_pool_padding))
        self._geometry += [(3, s, 1) for s in strides]

    def forward(self, x: Tensor) -> Tensor:
        out = self.first_pool(self.first_conv(x))
        for stage in self.layer_list:
            out = stage(out)
        return torch.relu(self.final_bn(out))

    def output_shape(self, input_hw: tuple[int, int]) -> tuple[int, int]:
        """Spatial size ``(h, w)`` of the returned feature map for an input size."""
        sizes = list(input_hw)
        for kernel, stride, padding in self._geometry:
            sizes = [(n + 2 * padding - kernel) // stride + 1 for n in sizes]
        return sizes[0], sizes[1]


# ---------------------------------------------------------------------------
# ResNet v1 (post-activation), the GMIC local network
# ---------------------------------------------------------------------------
def projection_shortcut(in_channels: int, out_channels: int, stride: int,
                        norm: NormFactory) -> nn.Sequential | None:
    """1x1 convolution + norm where a residual block changes shape; None (identity) else."""
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(conv1x1(in_channels, out_channels, stride), norm(out_channels))


class BasicBlock(nn.Module):
    """conv3x3 → norm → ReLU → conv3x3 → norm, plus shortcut, then ReLU."""

    expansion = 1

    def __init__(self, in_channels: int, width: int, stride: int, norm: NormFactory) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = conv3x3(in_channels, width, stride)
        self.bn1 = norm(width)
        self.conv2 = conv3x3(width, width)
        self.bn2 = norm(width)
        self.downsample = projection_shortcut(in_channels, out_channels, stride, norm)

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = self.downsample(x) if self.downsample is not None else x
        return torch.relu(out + shortcut)


class Bottleneck(nn.Module):
    """1x1 → 3x3 (stride) → 1x1 (x4 channels), each followed by norm, ReLU between."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int, norm: NormFactory) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = conv1x1(in_channels, width)
        self.bn1 = norm(width)
        self.conv2 = conv3x3(width, width, stride)
        self.bn2 = norm(width)
        self.conv3 = conv1x1(width, out_channels)
        self.bn3 = norm(out_channels)
        self.downsample = projection_shortcut(in_channels, out_channels, stride, norm)

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = self.downsample(x) if self.downsample is not None else x
        return torch.relu(out + shortcut)


#: Depth name → (block type, blocks per stage).
RESNET_V1_LAYOUTS: dict[str, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, ...]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
}


class ResNetV1(nn.Module):
    """ImageNet-style ResNet without classifier; returns ``(N, out_features)``."""

    def __init__(self, depth: str = "resnet18", in_channels: int = 3,
                 norm: NormFactory = batch_norm) -> None:
        super().__init__()
        try:
            block, layout = RESNET_V1_LAYOUTS[depth]
        except KeyError as exc:
            raise ValueError(
                f"unknown local network {depth!r}; use one of {sorted(RESNET_V1_LAYOUTS)}"
            ) from exc
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = norm(64)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        channels = 64
        stages: list[nn.Sequential] = []
        for index, n_blocks in enumerate(layout):
            width = 64 * 2**index
            stride = 1 if index == 0 else 2
            layers: list[nn.Module] = []
            for b in range(n_blocks):
                layers.append(block(channels, width, stride if b == 0 else 1, norm))
                channels = width * block.expansion
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.out_features = channels

    def forward(self, x: Tensor) -> Tensor:
        out = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return out.mean(dim=(2, 3))
