"""3D-GMIC: GMIC for digital breast tomosynthesis (Park et al.).

Built from the paper (section III-A and V-B) and the published checkpoint's key layout
(the same keys as GMIC without ``fusion_dnn``, and without BatchNorm buffers in the
global network):

* global network ``ds_net``: ResNet-22 (as GMIC) with GroupNorm(8) instead of BatchNorm,
  applied to every slice separately. Slices go through it ``slice_chunk`` at a time, so
  the activations held at once are those of one chunk, whatever the number of slices
  (GroupNorm normalises each slice on its own, so chunking changes nothing);
* saliency: ``left_postprocess_net.gn_conv_last`` (1x1 conv, no bias) followed by
  ``relu(tanh(.))``, per slice → ``A`` ``(D, C, h, w)``;
* ``y_global``: mean of the top values of each class over the whole volume, where the
  count is defined per slice (section V-B.3): ``round(h * w * t)`` values out of the
  ``D * h * w`` of the volume (``t`` may exceed 1; the count is clipped to ``[1, D*h*w]``),
  so it does not depend on the number of slices;
* :func:`triage.models.roi3d.retrieve_roi_from_3d_image` picks K windows and their slices
  (±ζ neighbouring-slice exclusion); the crops are gathered from the chosen slices and
  fed (replicated to 3 channels) to the local ResNet-18 ``dn_resnet`` (BatchNorm);
* gated attention (``mil_attn_V``, ``mil_attn_U``, ``mil_attn_w``, no biases),
  ``z = sum_k alpha_k h_k``, ``y_local = sigm(classifier_linear(z))``;
* output: ``(y_global + y_local) / 2`` — no fusion layer.

Crops near the bottom/right edge: a window position may put a crop past the image edge
(e.g. map row 20 of 24 → pixel row 1234 of 1481). As the reference fixture shows, the
crop is then the ``crop_shape`` block shifted inside the image whose cells outside the
requested window are filled with the minimum value (the background after
standardisation) — so the image content keeps its position at the crop's bottom/right
and the rest is background. The fixture cannot tell the minimum of the slice from that
of the volume (they are equal there); the minimum of the crop's slice is used.

``forward`` is pure (nothing is stored on ``self``) and scores one volume
``(1, 1, D, H, W)``. The volume may stay on the CPU while the model is on a GPU: only
one chunk of slices (and the K crops) is moved at a time. Memory is bounded by the
chunk only when autograd is off: call it under ``torch.inference_mode()``. Under autocast
the saliency head, pooling and ROI retrieval run in float32.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from triage.errors import ModelError
from triage.models.blocks import ResNetV2, group_norm
from triage.models.gmic import LocalMILBranch, SaliencyHead, check_cam_size
from triage.models.roi3d import DEFAULT_ZETA, retrieve_roi_from_3d_image

#: The slice size of the published models' DBT preprocessing.
GMIC3D_SLICE_SHAPE = (2116, 1339)


@dataclass(frozen=True)
class GMIC3DConfig:
    """Hyper-parameters of one 3D-GMIC model (names follow the paper).

    ``percent_t`` is the pooling fraction with respect to one slice (1.5 = 150% of a
    slice's map); ``zeta`` the neighbouring-slice half-width of the ROI search;
    ``slice_chunk`` how many slices go through the global network at once (memory only;
    results do not depend on it).
    """

    percent_t: float = 1.5108578607685
    k: int = 12
    crop_shape: tuple[int, int] = (256, 256)
    post_processing_dim: int = 256
    num_classes: int = 2
    local_network: str = "resnet18"
    num_groups: int = 8
    zeta: int = DEFAULT_ZETA
    input_shape: tuple[int, int] = GMIC3D_SLICE_SHAPE  # per slice; forward is generic
    attention_dim: int = 128
    slice_chunk: int = 2

    def __post_init__(self) -> None:
        if not self.percent_t > 0:
            raise ModelError(f"3D-GMIC percent_t must be positive, got {self.percent_t}")
        if self.k < 1:
            raise ModelError(f"3D-GMIC K must be at least 1, got {self.k}")
        if self.zeta < 0:
            raise ModelError(f"3D-GMIC zeta must be at least 0, got {self.zeta}")
        if self.slice_chunk < 1:
            raise ModelError(f"3D-GMIC slice_chunk must be at least 1, got {self.slice_chunk}")

    @classmethod
    def from_hyperparameters(cls, hp: Mapping[str, Any]) -> GMIC3DConfig:
        """Build from a ``hyperparameters`` object as in the fixtures' ``gmic3d_summary.json``."""
        if hp.get("use_v1_global", False):
            raise ModelError("3D-GMIC with a v1 global network is not supported (use_v1_global)")
        if hp.get("norm_class", "group") != "group":
            raise ModelError(f"3D-GMIC needs GroupNorm in the global network, got "
                             f"norm_class={hp['norm_class']!r}")
        if hp.get("saliency_nonlinearity", "tanh_relu") != "tanh_relu":
            raise ModelError(f"3D-GMIC needs the relu(tanh) saliency, got "
                             f"saliency_nonlinearity={hp['saliency_nonlinearity']!r}")
        input_shape = hp.get("input_shape", GMIC3D_SLICE_SHAPE)
        config = cls(
            percent_t=float(hp["percent_t"]),
            k=int(hp["K"]),
            crop_shape=(int(hp["crop_shape"][0]), int(hp["crop_shape"][1])),
            post_processing_dim=int(hp.get("post_processing_dim", 256)),
            num_classes=int(hp.get("num_classes", 2)),
            local_network=str(hp.get("local_network", "resnet18")),
            num_groups=int(hp.get("num_groups", 8)),
            zeta=int(hp.get("zeta_slice_threshold_dist", DEFAULT_ZETA)),
            input_shape=(int(input_shape[-2]), int(input_shape[-1])),
        )
        check_cam_size(hp, config.input_shape)
        return config


class GMIC3DOutput(NamedTuple):
    """Everything one 3D-GMIC forward pass produces for one volume of D slices.

    ``saliency_map`` (D, C, h, w) float32, per slice; ``y_global``, ``y_local``,
    ``final_prediction`` (1, C) probabilities (benign, malignant); ``patch_locations``
    (1, K, 2) int64 upper-left (row, col) in slice pixels of the crops, taken from slices
    ``slice_numbers`` (1, K) int64 (the reference's ``max_slice_numbers``);
    ``patch_locations_all_slices`` (D, K, 2): every slice's own best window at each step;
    ``patch_attention`` (1, K); ``h_crops`` (1, K, L) local features; ``z`` (1, L)
    attention-weighted local feature; ``crops`` (1, K, hc, wc) only when requested.
    """

    saliency_map: Tensor
    y_global: Tensor
    y_local: Tensor
    final_prediction: Tensor
    patch_locations: Tensor
    slice_numbers: Tensor
    patch_locations_all_slices: Tensor
    patch_attention: Tensor
    h_crops: Tensor
    z: Tensor
    crops: Tensor | None = None


class TanhReluSaliencyHead(SaliencyHead):
    """GMIC's 1x1 saliency convolution (key ``gn_conv_last``) with ``relu(tanh(.))``."""

    def forward(self, h_g: Tensor) -> Tensor:
        return torch.relu(torch.tanh(self.gn_conv_last(h_g)))


def top_t_per_slice(saliency: Tensor, percent_t: float) -> Tensor:
    """Mean of the top ``round(h*w*t)`` values of each class over all slices.

    ``(D, C, h, w) -> (1, C)``; the count is clipped to ``[1, D*h*w]``.
    """
    d, c, h, w = saliency.shape
    count = min(d * h * w, max(1, round(h * w * percent_t)))
    flat = saliency.transpose(0, 1).reshape(c, d * h * w)
    return flat.topk(count, dim=1, sorted=False).values.mean(dim=1)[None]


def gather_volume_crops(volume: Tensor, slices: Tensor, locations: Tensor,
                        crop_shape: tuple[int, int]) -> Tensor:
    """Crops ``(K, hc, wc)`` of ``volume`` (D, H, W): crop ``k`` from slice ``slices[k]``
    at upper-left ``locations[k]``; past the image edge as described in the module doc."""
    _, height, width = volume.shape
    hc, wc = crop_shape
    if hc > height or wc > width:
        raise ModelError(f"crop {crop_shape} is larger than the slices {height}x{width}")
    device = volume.device
    slices = slices.to(device)
    top, left = locations[:, 0].to(device), locations[:, 1].to(device)
    rows = top.clamp(0, height - hc)[:, None] + torch.arange(hc, device=device)  # (K, hc)
    cols = left.clamp(0, width - wc)[:, None] + torch.arange(wc, device=device)  # (K, wc)
    crops = volume[slices[:, None, None], rows[:, :, None], cols[:, None, :]]
    row_in = (rows >= top[:, None]) & (rows < top[:, None] + hc)
    col_in = (cols >= left[:, None]) & (cols < left[:, None] + wc)
    inside = row_in[:, :, None] & col_in[:, None, :]
    if bool(inside.all()):
        return crops
    fill = torch.stack([volume[int(s)].amin() for s in slices.tolist()])
    return torch.where(inside, crops, fill[:, None, None].to(crops.dtype))


class GMIC3D(LocalMILBranch):
    """3D-GMIC: ResNet-22/GroupNorm(8) global network per slice, ResNet-18 local network."""

    def __init__(self, config: GMIC3DConfig | None = None) -> None:
        super().__init__()
        self.config = config or GMIC3DConfig()
        c = self.config
        self.ds_net = ResNetV2(in_channels=1, norm=group_norm(c.num_groups))
        if self.ds_net.out_channels != c.post_processing_dim:
            raise ModelError("post_processing_dim must equal the global network width (256)")
        self.left_postprocess_net = TanhReluSaliencyHead(c.post_processing_dim, c.num_classes)
        self._init_local_branch(c.local_network, c.attention_dim, c.num_classes)

    def _check_volume(self, x: Tensor) -> None:
        if x.dim() != 5 or x.shape[0] != 1 or x.shape[1] != 1 or x.shape[2] < 1:
            raise ModelError(
                f"3D-GMIC expects one volume (1, 1, D, H, W) with D >= 1, got {tuple(x.shape)}"
            )

    def global_saliency(self, x: Tensor, chunk_size: int | None = None) -> Tensor:
        """Saliency maps ``(D, C, h, w)`` float32 of a volume ``(1, 1, D, H, W)``.

        The slices go through the global network ``chunk_size`` (default
        ``config.slice_chunk``) at a time; each chunk is moved to the model's device and
        dtype on its own, and only its saliency maps are kept.
        """
        self._check_volume(x)
        chunk = self.config.slice_chunk if chunk_size is None else chunk_size
        if chunk < 1:
            raise ModelError(f"3D-GMIC chunk size must be at least 1, got {chunk}")
        weight = self.ds_net.first_conv.weight
        slices = x[0, 0]
        maps = []
        for start in range(0, slices.shape[0], chunk):
            part = slices[start:start + chunk, None].to(device=weight.device, dtype=weight.dtype)
            h_g = self.ds_net(part)
            with torch.autocast(device_type=h_g.device.type, enabled=False):
                maps.append(self.left_postprocess_net(h_g.float()))
            del part, h_g
        return torch.cat(maps)

    def forward(self, x: Tensor, return_crops: bool = False,
                chunk_size: int | None = None) -> GMIC3DOutput:
        self._check_volume(x)
        c = self.config
        slice_hw = (int(x.shape[3]), int(x.shape[4]))
        if c.crop_shape[0] > slice_hw[0] or c.crop_shape[1] > slice_hw[1]:
            raise ModelError(f"3D-GMIC crop {c.crop_shape} is larger than the slices "
                             f"{slice_hw[0]}x{slice_hw[1]}; check the DBT preprocessing")
        saliency = self.global_saliency(x, chunk_size)
        with torch.autocast(device_type=saliency.device.type, enabled=False):
            y_global = top_t_per_slice(saliency, c.percent_t)
            roi = retrieve_roi_from_3d_image(saliency.detach(), c.k, c.crop_shape, slice_hw,
                                             c.zeta)

        weight = self.ds_net.first_conv.weight
        crops = gather_volume_crops(x[0, 0], roi.slices, roi.patch_locations, c.crop_shape)
        crops = crops.to(device=weight.device, dtype=weight.dtype)  # (K, hc, wc)
        local_in = crops[:, None].expand(-1, 3, -1, -1)
        h_crops = self.dn_resnet(local_in)[None]  # (1, K, L)

        attention, z, y_local = self._local_attention(h_crops)  # (1, K), (1, L), (1, C)
        final = 0.5 * y_global.to(y_local.dtype) + 0.5 * y_local
        return GMIC3DOutput(
            saliency_map=saliency,
            y_global=y_global,
            y_local=y_local,
            final_prediction=final,
            patch_locations=roi.patch_locations[None],
            slice_numbers=roi.slices[None],
            patch_locations_all_slices=roi.patch_locations_all_slices,
            patch_attention=attention,
            h_crops=h_crops,
            z=z,
            crops=crops[None] if return_crops else None,
        )
