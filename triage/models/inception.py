"""Inception-v3 as a feature extractor, written from its paper's architecture description.

Szegedy et al. 2016, "Rethinking the Inception Architecture for Computer Vision": Table 1
and section 6 give the outline, Figures 5, 6, 7 and 10 the modules. GlimpseNet (Hang et al.)
uses this network per glimpse and keeps the 2048 average-pooled features; the logits layer
is the GlimpseNet instance classifier, so it is not part of this module.

Outline (section 6 / Table 1, sizes for a 299x299 input; every convolution is
conv (no bias) -> BatchNorm -> ReLU, "BN" as in the paper's section 7):

====================  =============================================  ===============
stage                 layers                                         output
====================  =============================================  ===============
stem                  conv 3x3/2 (32); conv 3x3 (32); conv 3x3       35x35x288
                      padded (64); max pool 3x3/2; conv 3x3 (80);
                      conv 3x3/2 (192); conv 3x3 padded (288)
3 x Figure 5          1x1 | 1x1-3x3 | 1x1-3x3-3x3 | pool-1x1         35x35x288
grid reduction        Figure 10: 1x1-3x3/2 | 1x1-3x3-3x3/2 | pool/2   17x17x768
5 x Figure 6 (n=7)    1x1 | 1x1-1x7-7x1 | 1x1-1x7-7x1-1x7-7x1 |       17x17x768
                      pool-1x1
grid reduction        Figure 10, as above                             8x8x1280
2 x Figure 7          1x1 | 1x1-{1x3,3x1} | 1x1-3x3-{1x3,3x1} |        8x8x2048
                      pool-1x1
global average pool                                                   2048
====================  =============================================  ===============

The paper fixes the outline and the output widths (288, 768, 1280, 2048) but not every
branch width; the choices made here (all documented, no published checkpoint constrains
them for GlimpseNet, whose authors published no weights):

* stem: exactly Table 1's seven convolutions and one pool. The table's last convolution
  (input 35x35x192, next input 35x35x288) keeps the 35x35 grid, so it is padded, as is
  "conv padded"; the others are unpadded.
* Figure 5 (35x35, 288 out): 64 | 64->96 | 64->96->96 | 3x3 average pool -> 32.
* grid reductions (Figure 10: stride-2 convolution branches beside a stride-2 pool, filter
  banks concatenated; the paper allows max or average pooling, max is used): 35->17 with
  192->384 | 64->96->96 | pool (288) = 768; 17->8 with 192->320 | 192->192->192 | pool
  (768) = 1280. Stride-2 convolutions and the pool are unpadded ("valid"), which gives the
  paper's 35 -> 17 -> 8 grids.
* Figure 6 (17x17, 768 out, n = 7 as the paper chooses for the 17x17 grid):
  192 | 160->160->192 | 160->160->160->160->192 | pool -> 192, each n x n factorised as
  1xn followed by nx1, the figure's order.
* Figure 7 (8x8, 2048 out): 320 | 384->{384, 384} | 448->384->{384, 384} | pool -> 192.
* pools inside modules: 3x3 average, stride 1, padding 1, padded cells not counted.
* BatchNorm epsilon 1e-3; PyTorch's default parameter initialisation (the paper trains
  from scratch; GlimpseNet starts from ImageNet weights that are not available here).
* The auxiliary classifier (section 7) only regularises training and is left out.

Smallest input: 75x75 (the two unpadded grid reductions need an 8x8 -> 3x3 -> 1x1 path).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

#: BatchNorm epsilon of every convolution (the paper does not give one).
BN_EPS = 1e-3
#: Smallest input side the network accepts.
MIN_INPUT = 75


class ConvBN(nn.Module):
    """Convolution (no bias) -> BatchNorm -> ReLU. ``padding="same"`` pads stride-1 kernels
    to keep the grid; an int pads that many cells."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int | tuple[int, int],
                 stride: int = 1, padding: int | str = 0) -> None:
        super().__init__()
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        pad: int | tuple[int, int] = (kh // 2, kw // 2) if padding == "same" else int(padding)
        self.conv = nn.Conv2d(in_channels, out_channels, (kh, kw), stride=stride, padding=pad,
                              bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.bn(self.conv(x)))


def chain(in_channels: int, layers: Sequence[tuple[int, int | tuple[int, int]]]) -> nn.Sequential:
    """Stride-1 "same" convolutions ``(out_channels, kernel)`` one after the other."""
    modules: list[nn.Module] = []
    for out_channels, kernel in layers:
        modules.append(ConvBN(in_channels, out_channels, kernel, padding="same"))
        in_channels = out_channels
    return nn.Sequential(*modules)


class PoolProjection(nn.Module):
    """3x3 average pool (stride 1) then a 1x1 convolution: the modules' pool branch."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
        self.proj = ConvBN(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.pool(x))


class Figure5(nn.Module):
    """35x35 module: the 5x5 of the original Inception replaced by two 3x3 convolutions."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.single = ConvBN(in_channels, 64, 1)
        self.one_3x3 = chain(in_channels, [(64, 1), (96, 3)])
        self.two_3x3 = chain(in_channels, [(64, 1), (96, 3), (96, 3)])
        self.pooled = PoolProjection(in_channels, 32)
        self.out_channels = 64 + 96 + 96 + 32

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.single(x), self.one_3x3(x), self.two_3x3(x), self.pooled(x)], 1)


class Figure6(nn.Module):
    """17x17 module: n x n convolutions factorised into 1 x n followed by n x 1 (n = 7)."""

    def __init__(self, in_channels: int, inner: int = 160, n: int = 7) -> None:
        super().__init__()
        row, col = (1, n), (n, 1)
        self.single = ConvBN(in_channels, 192, 1)
        self.one_nxn = chain(in_channels, [(inner, 1), (inner, row), (192, col)])
        self.two_nxn = chain(in_channels, [(inner, 1), (inner, row), (inner, col),
                                           (inner, row), (192, col)])
        self.pooled = PoolProjection(in_channels, 192)
        self.out_channels = 4 * 192

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.single(x), self.one_nxn(x), self.two_nxn(x), self.pooled(x)], 1)


class SplitRowColumn(nn.Module):
    """Figure 7's expanded filter bank: a 1x3 and a 3x1 convolution side by side."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.row = ConvBN(in_channels, out_channels, (1, 3), padding="same")
        self.col = ConvBN(in_channels, out_channels, (3, 1), padding="same")

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.row(x), self.col(x)], 1)


class Figure7(nn.Module):
    """8x8 module with expanded filter-bank outputs (2048 channels)."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.single = ConvBN(in_channels, 320, 1)
        self.wide = nn.Sequential(ConvBN(in_channels, 384, 1), SplitRowColumn(384, 384))
        self.deep_wide = nn.Sequential(chain(in_channels, [(448, 1), (384, 3)]),
                                       SplitRowColumn(384, 384))
        self.pooled = PoolProjection(in_channels, 192)
        self.out_channels = 320 + 2 * 384 + 2 * 384 + 192

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.single(x), self.wide(x), self.deep_wide(x), self.pooled(x)], 1)


class GridReduction(nn.Module):
    """Figure 10: stride-2 convolution branches concatenated with a stride-2 max pool.

    ``shallow`` = (1x1 width, stride-2 3x3 width); ``deep`` = (1x1 width, 3x3 width,
    stride-2 3x3 width). The pool keeps the input channels.
    """

    def __init__(self, in_channels: int, shallow: tuple[int, int],
                 deep: tuple[int, int, int]) -> None:
        super().__init__()
        self.shallow = nn.Sequential(ConvBN(in_channels, shallow[0], 1),
                                     ConvBN(shallow[0], shallow[1], 3, stride=2))
        self.deep = nn.Sequential(chain(in_channels, [(deep[0], 1), (deep[1], 3)]),
                                  ConvBN(deep[1], deep[2], 3, stride=2))
        self.pool = nn.MaxPool2d(3, stride=2)
        self.out_channels = shallow[1] + deep[2] + in_channels

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.shallow(x), self.deep(x), self.pool(x)], 1)


class InceptionV3Features(nn.Module):
    """Inception-v3 up to its global average pool: ``(N, C, H, W) -> (N, 2048)``."""

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            ConvBN(in_channels, 32, 3, stride=2),
            ConvBN(32, 32, 3),
            ConvBN(32, 64, 3, padding=1),
            nn.MaxPool2d(3, stride=2),
            ConvBN(64, 80, 3),
            ConvBN(80, 192, 3, stride=2),
            ConvBN(192, 288, 3, padding=1),
        )
        self.grid35 = nn.Sequential(*[Figure5(288) for _ in range(3)])
        self.reduce35 = GridReduction(288, shallow=(192, 384), deep=(64, 96, 96))
        self.grid17 = nn.Sequential(*[Figure6(768) for _ in range(5)])
        self.reduce17 = GridReduction(768, shallow=(192, 320), deep=(192, 192, 192))
        self.grid8 = nn.Sequential(Figure7(1280), Figure7(2048))
        self.out_features = 2048

    def feature_maps(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The 35x35, 17x17 and 8x8 grids' outputs (for a 299x299 input)."""
        g35 = self.grid35(self.stem(x))
        g17 = self.grid17(self.reduce35(g35))
        g8 = self.grid8(self.reduce17(g17))
        return g35, g17, g8

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2] < MIN_INPUT or x.shape[-1] < MIN_INPUT:
            raise ValueError(f"Inception-v3 needs inputs of at least {MIN_INPUT}x{MIN_INPUT}, "
                             f"got {tuple(x.shape[-2:])}")
        return self.feature_maps(x)[2].mean(dim=(2, 3))
