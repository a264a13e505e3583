"""GMIC: globally-aware multiple instance classifier (Shen et al. 2021).

Built from the paper (section 2) and the published checkpoint's key layout:

* global network ``ds_net``: ResNet-22 (pre-activation, 16 filters, blocks [2,2,2,2,2],
  strides [1,2,2,2,2]) giving ``h_g`` of shape ``(N, 256, H/64, W/64)``;
* saliency: ``left_postprocess_net.gn_conv_last`` (1x1 conv, no bias) + sigmoid → ``A``
  ``(N, 2, h, w)``; ``y_global`` = mean of the top t% values of each class map
  (``round(h * w * t)`` values, at least one);
* :func:`triage.models.roi.retrieve_roi` picks K windows; the 256x256 input crops at those
  positions are gathered with tensor indexing and fed (replicated to 3 channels) to the
  local network ``dn_resnet`` (ResNet-18/34/50, average-pooled features ``h_k``);
* gated attention (Ilse et al. 2018): ``alpha = softmax_k(w^T (tanh(V h_k) * sigm(U h_k)))``
  (``mil_attn_V``, ``mil_attn_U``, ``mil_attn_w``, no biases), ``z = sum_k alpha_k h_k``,
  ``y_local = sigm(classifier_linear(z))`` (no bias);
* fusion: ``y_fusion = sigm(fusion_dnn([GMP(h_g), z]))``.

The module is size-generic: the saliency map size follows the input (overall stride 64)
and the ROI window is ``crop * h / H`` cells (4x4 at 2944x1920 and at 1472x960).
``forward`` is pure (nothing is stored on ``self``) and batched over views. Under autocast
the saliency head, top-t% pooling and ROI retrieval run in float32.

Crops that would extend past the image edge (possible only for input sizes that are not a
multiple of the map size) are shifted inside the image; at the published sizes every crop
is inside and positions are exactly the reference's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from triage.errors import ModelError
from triage.models.blocks import ResNetV1, ResNetV2
from triage.models.roi import retrieve_roi


@dataclass(frozen=True)
class GMICConfig:
    """Hyper-parameters of one GMIC model (names follow the paper)."""

    percent_t: float = 0.02
    k: int = 6
    crop_shape: tuple[int, int] = (256, 256)
    post_processing_dim: int = 256
    num_classes: int = 2
    local_network: str = "resnet18"
    input_shape: tuple[int, int] = (2944, 1920)  # per view; informative, forward is generic
    attention_dim: int = 128

    def __post_init__(self) -> None:
        if not 0 < self.percent_t <= 1:
            raise ModelError(f"GMIC percent_t must be in (0, 1], got {self.percent_t}")
        if self.k < 1:
            raise ModelError(f"GMIC K must be at least 1, got {self.k}")

    @classmethod
    def from_hyperparameters(cls, hp: Mapping[str, Any]) -> GMICConfig:
        """Build from a ``hyperparameters`` object as in the fixtures' ``gmic_summary.json``."""
        if hp.get("use_v1_global", False):
            raise ModelError("GMIC with a v1 global network is not supported (use_v1_global)")
        input_shape = hp.get("input_shape", (2944, 1920))
        config = cls(
            percent_t=float(hp["percent_t"]),
            k=int(hp["K"]),
            crop_shape=(int(hp["crop_shape"][0]), int(hp["crop_shape"][1])),
            post_processing_dim=int(hp.get("post_processing_dim", 256)),
            num_classes=int(hp.get("num_classes", 2)),
            local_network=str(hp.get("local_network", "resnet18")),
            input_shape=(int(input_shape[-2]), int(input_shape[-1])),
        )
        check_cam_size(hp, config.input_shape)
        return config


def saliency_shape(input_hw: tuple[int, int]) -> tuple[int, int]:
    """Saliency map size ``(h, w)`` of the GMIC global network for an input (slice) size."""
    return ResNetV2(in_channels=1).output_shape(input_hw)


def check_cam_size(hp: Mapping[str, Any], input_hw: tuple[int, int]) -> None:
    """A ``cam_size`` hyper-parameter must be what the global network gives for the input."""
    cam = hp.get("cam_size")
    if cam is not None and tuple(int(c) for c in cam) != saliency_shape(input_hw):
        raise ModelError(
            f"cam_size {tuple(cam)} does not follow from input {input_hw} "
            f"(expected {saliency_shape(input_hw)})"
        )


class GMICOutput(NamedTuple):
    """Everything one GMIC forward pass produces, batched over N views.

    ``saliency_map`` (N, C, h, w) float32; ``y_global``, ``y_local``, ``y_fusion`` (N, C)
    probabilities (benign, malignant); ``patch_locations`` (N, K, 2) int64 upper-left
    (row, col) in input pixels; ``patch_attention`` (N, K); ``global_vec`` (N, 256)
    max-pooled global features; ``h_crops`` (N, K, L) local features; ``z`` (N, L)
    attention-weighted local feature; ``crops`` (N, K, hc, wc) only when requested.
    """

    saliency_map: Tensor
    y_global: Tensor
    y_local: Tensor
    y_fusion: Tensor
    patch_locations: Tensor
    patch_attention: Tensor
    global_vec: Tensor
    h_crops: Tensor
    z: Tensor
    crops: Tensor | None = None


class SaliencyHead(nn.Module):
    """1x1 convolution without bias; its key is ``gn_conv_last``."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.gn_conv_last = nn.Conv2d(in_channels, num_classes, 1, bias=False)

    def forward(self, h_g: Tensor) -> Tensor:
        return torch.sigmoid(self.gn_conv_last(h_g))


def top_t_percent(saliency: Tensor, percent_t: float) -> Tensor:
    """Mean of the top ``round(h*w*t)`` values of each map: ``(N, C, h, w) -> (N, C)``."""
    flat = saliency.flatten(2)
    count = max(1, round(flat.shape[-1] * percent_t))
    return flat.topk(count, dim=2, sorted=False).values.mean(dim=2)


def gather_crops(images: Tensor, locations: Tensor, crop_shape: tuple[int, int]) -> Tensor:
    """Crops ``(N, K, hc, wc)`` of single-channel ``images`` (N, 1, H, W) at upper-left
    ``locations`` (N, K, 2), by tensor indexing (shifted inside the image if needed)."""
    n, _, height, width = images.shape
    hc, wc = crop_shape
    if hc > height or wc > width:
        raise ModelError(f"crop {crop_shape} is larger than the input {height}x{width}")
    top = locations[..., 0].clamp(0, height - hc)
    left = locations[..., 1].clamp(0, width - wc)
    rows = top[..., None] + torch.arange(hc, device=images.device)  # (N, K, hc)
    cols = left[..., None] + torch.arange(wc, device=images.device)  # (N, K, wc)
    batch = torch.arange(n, device=images.device)[:, None, None, None]
    return images[:, 0][batch, rows[..., :, None], cols[..., None, :]]


class LocalMILBranch(nn.Module):
    """The local half shared by GMIC and 3D-GMIC: ResNet-V1 on the ROI crops, then gated
    attention MIL. Attribute names are the published checkpoint keys (``dn_resnet``,
    ``mil_attn_V``, ``mil_attn_U``, ``mil_attn_w``, ``classifier_linear``)."""

    def _init_local_branch(self, local_network: str, attention_dim: int,
                           num_classes: int) -> int:
        """Create the local modules; returns the local feature width."""
        try:
            self.dn_resnet = ResNetV1(local_network, in_channels=3)
        except ValueError as exc:
            raise ModelError(str(exc)) from exc
        features: int = self.dn_resnet.out_features
        self.mil_attn_V = nn.Linear(features, attention_dim, bias=False)
        self.mil_attn_U = nn.Linear(features, attention_dim, bias=False)
        self.mil_attn_w = nn.Linear(attention_dim, 1, bias=False)
        self.classifier_linear = nn.Linear(features, num_classes, bias=False)
        return features

    def _local_attention(self, h_crops: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(N, K, L) crop features -> attention (N, K), z (N, L), y_local (N, classes)."""
        gate = torch.tanh(self.mil_attn_V(h_crops)) * torch.sigmoid(self.mil_attn_U(h_crops))
        attention = torch.softmax(self.mil_attn_w(gate).squeeze(-1), dim=1)
        z = (attention.unsqueeze(-1) * h_crops).sum(dim=1)
        return attention, z, torch.sigmoid(self.classifier_linear(z))


class GMIC(LocalMILBranch):
    """GMIC with a ResNet-22 global network and a ResNet-18/34/50 local network."""

    def __init__(self, config: GMICConfig | None = None) -> None:
        super().__init__()
        self.config = config or GMICConfig()
        c = self.config
        self.ds_net = ResNetV2(in_channels=1)
        if self.ds_net.out_channels != c.post_processing_dim:
            raise ModelError("post_processing_dim must equal the global network width (256)")
        self.left_postprocess_net = SaliencyHead(c.post_processing_dim, c.num_classes)
        features = self._init_local_branch(c.local_network, c.attention_dim, c.num_classes)
        self.fusion_dnn = nn.Linear(c.post_processing_dim + features, c.num_classes)

    def forward(self, x: Tensor, return_crops: bool = False) -> GMICOutput:
        if x.dim() != 4 or x.shape[1] != 1:
            raise ModelError(f"GMIC expects input (N, 1, H, W), got {tuple(x.shape)}")
        c = self.config
        input_hw = (int(x.shape[2]), int(x.shape[3]))

        h_g = self.ds_net(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            h_g32 = h_g.float()
            saliency = self.left_postprocess_net(h_g32)
            y_global = top_t_percent(saliency, c.percent_t)
            _, locations = retrieve_roi(saliency.detach(), c.k, c.crop_shape, input_hw)
            global_vec = h_g32.amax(dim=(2, 3))

        crops = gather_crops(x, locations, c.crop_shape)  # (N, K, hc, wc)
        n, k = crops.shape[:2]
        local_in = crops.reshape(n * k, 1, *c.crop_shape).expand(-1, 3, -1, -1)
        h_crops = self.dn_resnet(local_in).reshape(n, k, -1)

        attention, z, y_local = self._local_attention(h_crops)
        fused = torch.cat([global_vec.to(z.dtype), z], dim=1)
        y_fusion = torch.sigmoid(self.fusion_dnn(fused))
        return GMICOutput(
            saliency_map=saliency,
            y_global=y_global,
            y_local=y_local,
            y_fusion=y_fusion,
            patch_locations=locations,
            patch_attention=attention,
            global_vec=global_vec,
            h_crops=h_crops,
            z=z,
            crops=crops if return_crops else None,
        )
