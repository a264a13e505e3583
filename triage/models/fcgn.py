"""Fully Convolutional Glimpse Network (FCGN): GlimpseNet's region map on a low-resolution view.

Hang et al., GlimpseNet §5.1: the FCGN "convolves and aggressively pools an image until it
becomes a one-dimensional hidden code. Transpose convolution and unpooling is applied to
the code until it regains the same dimensions as the original input"; it is adapted from the
deconvolution network of Noh et al. (ICCV 2015, the paper's [7]) and trained to reconstruct
the lesion mask with ``MSE = mean((I_hat - lambda I)^2)``, ``lambda = 100``. "Each
convolution and deconvolution layer was followed by batch normalization with scale 1 and
shift 0.01, and with ReLU."

Layout (the paper gives no layer table; the choices follow Noh et al.'s network, documented
because no published checkpoint constrains them):

* encoder: Noh et al.'s VGG-16 layout of 3x3 convolutions (padding 1) per stage,
  ``convs = (2, 2, 3, 3, 3)``, each stage ending in a 2x2 max pool that keeps its switches;
  widths halved from VGG's (64 ... 512) to ``(32, 64, 128, 256, 256)`` so that the network
  stays in the paper's 4 GB training budget at 512x512;
* code: a convolution whose kernel is the whole last pooled grid (16x16 at 512x512, "fc6")
  gives the one-dimensional code of ``code_channels`` (256) values, then a 1x1 convolution
  ("fc7"); a transposed convolution with the same kernel brings it back to the grid;
* decoder: the mirror of the encoder: 2x2 max unpooling with the encoder's switches, then
  as many 3x3 transposed convolutions (stride 1, padding 1) as the encoder stage had, the
  last of them narrowing to the previous stage's width;
* every (transposed) convolution is followed by BatchNorm (initialised to scale 1, shift
  0.01, as the paper states) and ReLU, the last one too, as the paper says of "each"
  layer: a 1x1 convolution (Noh et al.'s score layer) to one channel, BatchNorm, ReLU.
  No sigmoid: the training target of a lesion pixel is ``lambda = 100``, which the
  BatchNorm scale reaches and a sigmoid could not. The map is thus non-negative, on the
  scale 0 (background) .. ``lambda`` (lesion); :func:`confidence` turns it into [0, 1].
* dropout (the paper's 40 %, a training-only regulariser) has no weights and is left out.

The low-resolution side lengths must be multiples of ``2 ** len(convs)`` (32), so pooling
and unpooling are exact.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from triage.errors import ModelError

#: The paper's BatchNorm initialisation: scale 1, shift 0.01.
BN_SCALE, BN_SHIFT = 1.0, 0.01


class NormRelu(nn.Module):
    """A (transposed) convolution without bias, BatchNorm (scale 1, shift 0.01), ReLU."""

    def __init__(self, conv: nn.Conv2d | nn.ConvTranspose2d) -> None:
        super().__init__()
        self.conv = conv
        self.bn = nn.BatchNorm2d(conv.out_channels)
        nn.init.constant_(self.bn.weight, BN_SCALE)
        nn.init.constant_(self.bn.bias, BN_SHIFT)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.bn(self.conv(x)))


def conv3x3(in_channels: int, out_channels: int) -> NormRelu:
    return NormRelu(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False))


def deconv3x3(in_channels: int, out_channels: int) -> NormRelu:
    return NormRelu(nn.ConvTranspose2d(in_channels, out_channels, 3, padding=1, bias=False))


def code_kernel(low_res_shape: tuple[int, int], stages: int) -> tuple[int, int]:
    """Grid size after ``stages`` 2x2 pools: the kernel of the code convolution."""
    factor = 2**stages
    h, w = low_res_shape
    if h % factor or w % factor or h < factor or w < factor:
        raise ModelError(f"FCGN low-resolution size {low_res_shape} must be a positive "
                         f"multiple of {factor} in both directions ({stages} exact 2x2 pools)")
    return h // factor, w // factor


class FCGN(nn.Module):
    """Low-resolution view ``(N, 1, h, w)`` -> region map ``(N, 1, h, w)`` (>= 0, lesion
    pixels trained towards lambda)."""

    def __init__(self, low_res_shape: tuple[int, int],
                 widths: Sequence[int] = (32, 64, 128, 256, 256),
                 convs: Sequence[int] = (2, 2, 3, 3, 3),
                 code_channels: int = 256, in_channels: int = 1) -> None:
        super().__init__()
        if len(widths) != len(convs) or not widths or min(convs) < 1 or min(widths) < 1:
            raise ModelError(f"FCGN widths {tuple(widths)} and convolutions per stage "
                             f"{tuple(convs)} must be non-empty, positive and equally long")
        self.low_res_shape = (int(low_res_shape[0]), int(low_res_shape[1]))
        kernel = code_kernel(self.low_res_shape, len(widths))
        encoder: list[nn.Sequential] = []
        channels = in_channels
        for width, count in zip(widths, convs, strict=True):
            layers = [conv3x3(channels if i == 0 else width, width) for i in range(count)]
            encoder.append(nn.Sequential(*layers))
            channels = width
        self.encoder = nn.ModuleList(encoder)
        self.pool = nn.MaxPool2d(2, stride=2, return_indices=True)
        self.code = NormRelu(nn.Conv2d(channels, code_channels, kernel, bias=False))
        self.code_fc = NormRelu(nn.Conv2d(code_channels, code_channels, 1, bias=False))
        self.uncode = NormRelu(nn.ConvTranspose2d(code_channels, channels, kernel, bias=False))
        self.unpool = nn.MaxUnpool2d(2, stride=2)
        decoder: list[nn.Sequential] = []
        for stage, (width, count) in enumerate(zip(widths, convs, strict=True)):
            narrower = widths[stage - 1] if stage > 0 else widths[0]
            layers = [deconv3x3(width, width if i < count - 1 else narrower)
                      for i in range(count)]
            decoder.append(nn.Sequential(*layers))
        self.decoder = nn.ModuleList(decoder)  # decoder[i] mirrors encoder[i]
        self.head = NormRelu(nn.Conv2d(widths[0], 1, 1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or tuple(x.shape[2:]) != self.low_res_shape:
            raise ModelError(f"FCGN expects (N, C, {self.low_res_shape[0]}, "
                             f"{self.low_res_shape[1]}), got {tuple(x.shape)}")
        switches: list[tuple[Tensor, torch.Size]] = []
        out = x
        for stage in self.encoder:
            out = stage(out)
            size = out.shape
            out, indices = self.pool(out)
            switches.append((indices, size))
        out = self.uncode(self.code_fc(self.code(out)))
        for stage, (indices, size) in zip(reversed(self.decoder), reversed(switches),
                                          strict=True):
            out = stage(self.unpool(out, indices, output_size=size[2:]))
        return self.head(out)


def confidence(region_map: Tensor, penalty: float) -> Tensor:
    """The region map on [0, 1]: ``clamp(map / lambda, 0, 1)`` (a lesion pixel's target is
    ``lambda``), in float32."""
    return (region_map.float() / penalty).clamp(0.0, 1.0)


def low_resolution(x: Tensor, low_res_shape: tuple[int, int]) -> Tensor:
    """The low-resolution view the FCGN sees: area (box-filter) resampling of the model
    input to ``low_res_shape``, aspect ratio not kept (the paper resizes to 512x512)."""
    return F.interpolate(x, size=low_res_shape, mode="area")
