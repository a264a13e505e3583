"""GlimpseNet (Hang, Liu & Hannun, "GlimpseNet: Attentional Methods for Full-Image Mammogram
Diagnosis", Stanford): region map, glimpses, Inception-v3 per glimpse, MIL pooling.

The paper's pipeline (§5, Figure 1) and where each step lives:

1. the Fully Convolutional Glimpse Network sees a low-resolution copy of the view and
   produces a region map (:mod:`triage.models.fcgn`);
2. non-maximum suppression at IoU 0.5 picks the top non-overlapping regions of the map
   (:mod:`triage.models.glimpses`);
3. those regions are cropped from the full-resolution image and each crop goes through
   Inception-v3 (:mod:`triage.models.inception`), whose 2048 features feed a linear layer
   with one sigmoid per class: the instance probabilities ``p_ij``;
4. a multiple-instance pooling function (LSE, Noisy-AND or top-k, :mod:`triage.models.mil`)
   turns the bag into the view's class probabilities ``P_i``.

Classes and the product's outputs. The paper classifies DDSM cases into BENIGN WITHOUT
CALLBACK, BENIGN and MALIGNANT, each class a separate binary task (Kraus et al.), so the
three pooled probabilities do not sum to 1. ``class_probabilities`` keeps all three in that
order; the product's (benign, malignant) pair is (P(BENIGN), P(MALIGNANT)). BENIGN WITHOUT
CALLBACK is a finding a reader would not recall, so it carries no worklist priority and
is not folded into the benign output, whose meaning in the product (as in GMIC) is a
benign finding that was worked up.

Choices the paper leaves open (beyond those documented in the step modules):

* input: one view standardised by the product's shared 2D preprocessing at
  ``input_shape`` (2944x1920, the GMIC size, so that the view is prepared once for both
  families). The paper subtracts the channel mean without variance normalisation; the
  shared preprocessing also divides by the standard deviation (a scale the weights a site
  trains absorb). The low-resolution copy is an area resampling to 512x512 (the paper's
  size; aspect ratio not kept);
* glimpses: ``num_glimpses = 6`` (GMIC's K; the paper's top-k pooling with k = 3 needs
  more than 3) crops of 299x299 input pixels, Inception-v3's native input size, so the
  crop is not resampled; the grey crop is repeated on the three input channels that the
  ImageNet-initialised Inception-v3 of the paper expects;
* the region map is class-agnostic (the FCGN learns DDSM lesion masks of every class); its
  confidence ``clamp(map / lambda, 0, 1)`` with the paper's penalty ``lambda = 100`` is
  the saliency, and a glimpse's score is its mean confidence;
* instance classifier: 40 % dropout (the paper's, identity at inference) then a linear
  layer 2048 -> 3 with bias and a sigmoid per class; the paper's three Table 1 models
  differ only in the pooling (``pooling`` and its hyper-parameters: r = 5, a = 10 and
  b = 0.2, k = 3), so they share this code and key layout but not weights;
* the crops are chosen without gradient (the paper: GlimpseNet "cannot be end-to-end
  trained"; the FCGN is trained on its own against the lesion masks).

``forward`` is pure (nothing is stored on ``self``) and batched over views. Under autocast
the confidence, window scores and NMS run in float32, and so does the pooling.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from triage.errors import ModelError
from triage.models.fcgn import FCGN, code_kernel, confidence, low_resolution
from triage.models.glimpses import candidate_grid, select_glimpses
from triage.models.gmic import gather_crops
from triage.models.inception import MIN_INPUT, InceptionV3Features
from triage.models.mil import (
    MILPooling,
    check_lse,
    check_noisy_and,
    check_topk,
    lse_pool,
    noisy_and_pool,
    topk_pool,
)

#: The paper's classes, in the order of ``class_probabilities``.
CLASSES = ("benign_without_callback", "benign", "malignant")
BENIGN_WITHOUT_CALLBACK, BENIGN, MALIGNANT = 0, 1, 2


@dataclass(frozen=True)
class GlimpseNetConfig:
    """Hyper-parameters of one GlimpseNet (names follow the paper where it has them)."""

    input_shape: tuple[int, int] = (2944, 1920)  # per view; informative, forward is generic
    low_res_shape: tuple[int, int] = (512, 512)
    glimpse_shape: tuple[int, int] = (299, 299)
    num_glimpses: int = 6
    nms_iou: float = 0.5
    candidate_stride: int = 1  # map cells between candidate windows
    fcgn_widths: tuple[int, ...] = (32, 64, 128, 256, 256)
    fcgn_convs: tuple[int, ...] = (2, 2, 3, 3, 3)
    fcgn_code_channels: int = 256
    mask_penalty: float = 100.0  # lambda of the FCGN loss: the map's lesion value
    pooling: MILPooling = MILPooling.LSE
    lse_r: float = 5.0
    noisy_and_a: float = 10.0
    noisy_and_b: float = 0.2
    topk_k: int = 3
    dropout: float = 0.4

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "pooling", MILPooling(self.pooling))
        except ValueError:
            raise ModelError(f"GlimpseNet pooling must be one of "
                             f"{[p.value for p in MILPooling]}, got {self.pooling!r}") from None
        gh, gw = self.glimpse_shape
        if min(gh, gw) < MIN_INPUT:
            raise ModelError(f"GlimpseNet glimpses must be at least {MIN_INPUT}x{MIN_INPUT} "
                             f"(Inception-v3), got {self.glimpse_shape}")
        if gh > self.input_shape[0] or gw > self.input_shape[1]:
            raise ModelError(f"glimpse {self.glimpse_shape} is larger than the input "
                             f"{self.input_shape}")
        if self.num_glimpses < 1 or self.candidate_stride < 1:
            raise ModelError("GlimpseNet needs at least one glimpse and a candidate stride "
                             f"of at least 1 (got {self.num_glimpses}, {self.candidate_stride})")
        if not 0 <= self.nms_iou <= 1 or self.mask_penalty <= 0 or not 0 <= self.dropout < 1:
            raise ModelError(f"GlimpseNet nms_iou must be in [0, 1], mask_penalty > 0 and "
                             f"dropout in [0, 1) (got {self.nms_iou}, {self.mask_penalty}, "
                             f"{self.dropout})")
        code_kernel(self.low_res_shape, len(self.fcgn_widths))
        try:
            check_lse(self.lse_r)
            check_noisy_and(self.noisy_and_a, self.noisy_and_b)
            check_topk(self.topk_k, self.num_glimpses)
        except ValueError as exc:
            raise ModelError(f"GlimpseNet pooling hyper-parameters: {exc}") from exc


class GlimpseNetOutput(NamedTuple):
    """Everything one GlimpseNet forward pass produces, batched over N views.

    ``probabilities`` (N, 2): the product's (benign, malignant) = (P(BENIGN), P(MALIGNANT));
    ``class_probabilities`` (N, 3): pooled P_i in :data:`CLASSES` order;
    ``instance_probabilities`` (N, K, 3): p_ij per glimpse; ``region_map`` (N, 1, h, w):
    the FCGN output (0 .. lambda); ``saliency`` (N, h, w) float32: its confidence in
    [0, 1] on the low-resolution grid (spanning the whole input); ``glimpse_boxes``
    (N, K, 4) int64: (top, left, bottom, right) in input pixels, half-open, best first;
    ``glimpse_scores`` (N, K): mean confidence of each glimpse's window; ``crops``
    (N, K, gh, gw): only when requested.
    """

    probabilities: Tensor
    class_probabilities: Tensor
    instance_probabilities: Tensor
    region_map: Tensor
    saliency: Tensor
    glimpse_boxes: Tensor
    glimpse_scores: Tensor
    crops: Tensor | None = None


class GlimpseNet(nn.Module):
    """FCGN region map -> NMS glimpses -> Inception-v3 per glimpse -> MIL pooling."""

    def __init__(self, config: GlimpseNetConfig | None = None) -> None:
        super().__init__()
        self.config = config or GlimpseNetConfig()
        c = self.config
        self.fcgn = FCGN(c.low_res_shape, c.fcgn_widths, c.fcgn_convs, c.fcgn_code_channels)
        self.inception = InceptionV3Features(in_channels=3)
        self.dropout = nn.Dropout(c.dropout)
        self.classifier = nn.Linear(self.inception.out_features, len(CLASSES))

    def pool(self, instance_probabilities: Tensor) -> Tensor:
        """The configured MIL pooling: ``(N, K, 3) -> (N, 3)``."""
        c = self.config
        if c.pooling is MILPooling.LSE:
            return lse_pool(instance_probabilities, c.lse_r)
        if c.pooling is MILPooling.NOISY_AND:
            return noisy_and_pool(instance_probabilities, c.noisy_and_a, c.noisy_and_b)
        return topk_pool(instance_probabilities, c.topk_k, MALIGNANT)

    def forward(self, x: Tensor, return_crops: bool = False) -> GlimpseNetOutput:
        if x.dim() != 4 or x.shape[1] != 1:
            raise ModelError(f"GlimpseNet expects input (N, 1, H, W), got {tuple(x.shape)}")
        c = self.config
        n = int(x.shape[0])
        input_hw = (int(x.shape[2]), int(x.shape[3]))
        region_map = self.fcgn(low_resolution(x, c.low_res_shape))
        with torch.autocast(device_type=x.device.type, enabled=False):
            saliency = confidence(region_map, c.mask_penalty)[:, 0]
            grid = candidate_grid(c.low_res_shape, input_hw, c.glimpse_shape,
                                  c.candidate_stride, x.device)
            boxes, scores = select_glimpses(saliency.detach(), grid, c.num_glimpses, c.nms_iou)

        crops = gather_crops(x, boxes[..., :2], c.glimpse_shape)  # (N, K, gh, gw)
        k = crops.shape[1]
        glimpses = crops.reshape(n * k, 1, *c.glimpse_shape).expand(-1, 3, -1, -1)
        features = self.inception(glimpses).reshape(n, k, -1)
        instance = torch.sigmoid(self.classifier(self.dropout(features)))
        with torch.autocast(device_type=x.device.type, enabled=False):
            pooled = self.pool(instance.float())
        return GlimpseNetOutput(
            probabilities=pooled[:, [BENIGN, MALIGNANT]],
            class_probabilities=pooled,
            instance_probabilities=instance,
            region_map=region_map,
            saliency=saliency,
            glimpse_boxes=boxes,
            glimpse_scores=scores,
            crops=crops if return_crops else None,
        )
