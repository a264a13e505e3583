"""DMV-CNN: the deep multi-view CNN of Wu et al. 2019 (breast_cancer_classifier).

Built from the paper (section IV) and the published checkpoints' key layout:

* column ("ResNet-22", Fig. 4): :class:`~triage.models.blocks.ResNetV2` with 16 filters,
  blocks [2,2,2,2,2], strides [1,2,2,2,2], a 7x7 stride-2 first convolution **without
  padding** and a 3x3 stride-2 max pool without padding, then final BatchNorm + ReLU; its
  output map (N, 256, h, w) is average-pooled to the 256-d view representation;
* the L-CC/R-CC columns share weights, and so do L-MLO/R-MLO (section IV-A). The checkpoint
  stores each shared column under three names (``four_view_resnet.{cc,l_cc,r_cc}`` and
  ``{mlo,l_mlo,r_mlo}``): :class:`FourViewResNet` registers the same module under all of
  them, so a strict load needs every alias, and refuses a file whose aliases differ;
* view-wise model (:class:`SplitBreastModel`, the published one, Fig. 5(a)): per angle,
  ``[h_L, h_R]`` (512) → ``fc1_<angle>`` + ReLU → ``output_layer_<angle>.fc_layer`` (8) →
  log-softmax over (4, 2): rows left_benign, right_benign, left_malignant,
  right_malignant; columns negative, positive. At inference the breast's probability is
  the mean of the CC and MLO branches' probabilities (section IV-A);
* image-wise model (:class:`ImageBreastModel`, Fig. 5(b)): per view ``fc1_<view>`` (256)
  + ReLU → ``output_layer_<view>.fc_layer`` (8 outputs, (4, 2) log-softmax). The
  single-image model (:class:`SingleImageBreastModel`) is one column, one ``fc1`` and the
  first 4 rows of that view's output layer, read as rows (benign, malignant); the
  image-wise model reports the same two rows per view (rows 2-3 of its 8 outputs are
  returned raw in ``logprob`` but used for nothing, as in the reference's single-image
  use), and each breast's probability is the mean of its CC and MLO views;
* image-and-heatmaps variant: the same with 3 input channels, the image and the patch
  classifier's two heatmaps (section IV-B; only the first convolution changes). The paper
  writes the input ``[x; x^m; x^b]``; the pipeline stacks ``[image, benign, malignant]``,
  the order of the published code (``triage.pipeline.dmv.HEATMAP_CHANNELS``). Nothing here
  can confirm which order the published weights expect: only the authors' sample
  predictions of ``sample_imageheatmaps_model.p`` can.

Inputs are the preprocessed views (N, C, H, W) with every breast facing right (the
imaging pipeline mirrors right breasts); model sizes CC 2677x1942, MLO 2974x1748 (any size
works: the columns are fully convolutional). The reference's training-time Gaussian noise
layer is inactive at inference and has no parameters, so it is not built. ``forward`` is
pure, the two views of an angle run as one batch through their shared column on an
accelerator (one after the other on the CPU, where that is faster), and the heads run in
float32 even under autocast.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from triage.errors import ModelError, WeightsError
from triage.models.blocks import ResNetV2
from triage.models.densenet import channels_last_weights
from triage.vocabulary import Laterality, View

#: Model input size (rows, columns) per view angle (section III).
DMV_INPUT_SIZE: Mapping[View, tuple[int, int]] = MappingProxyType(
    {View.CC: (2677, 1942), View.MLO: (2974, 1748)}
)
#: Width of a column's hidden representation.
HIDDEN = 256
#: Rows of the view-wise output (and of the image-wise 8-output layer).
ROW_LEFT_BENIGN, ROW_RIGHT_BENIGN, ROW_LEFT_MALIGNANT, ROW_RIGHT_MALIGNANT = 0, 1, 2, 3
#: Rows of the single-image output.
ROW_BENIGN, ROW_MALIGNANT = 0, 1
#: Column of the "finding present" log-probability.
POSITIVE = 1


class DMVMode(StrEnum):
    """How the view representations are combined (Fig. 5); the published models."""

    VIEW_SPLIT = "view_split"
    IMAGE_WISE = "image_wise"


@dataclass(frozen=True)
class DMVConfig:
    """Hyper-parameters of one DMV-CNN model."""

    input_channels: int = 1  # 1: image only; 3: image and heatmaps
    mode: DMVMode = DMVMode.VIEW_SPLIT

    def __post_init__(self) -> None:
        if self.input_channels not in (1, 3):
            raise ModelError(
                f"DMV-CNN takes 1 (image) or 3 (image + two heatmaps) input channels, "
                f"got {self.input_channels}"
            )
        object.__setattr__(self, "mode", DMVMode(self.mode))

    @classmethod
    def from_hyperparameters(cls, hp: Mapping[str, Any]) -> DMVConfig:
        """From a ``hyperparameters`` object as in the fixtures' ``dmv_cnn_summary.json``
        (``model_mode`` may carry a description after the mode name)."""
        channels = int(hp.get("input_channels", 3 if hp.get("use_heatmaps") else 1))
        if bool(hp.get("use_heatmaps", channels == 3)) != (channels == 3):
            raise ModelError(f"use_heatmaps={hp.get('use_heatmaps')} contradicts "
                             f"input_channels={channels}")
        mode_text = str(hp.get("model_mode", DMVMode.VIEW_SPLIT.value)).strip()
        mode_name = mode_text.split()[0] if mode_text else DMVMode.VIEW_SPLIT.value
        try:
            mode = DMVMode(mode_name)
        except ValueError as exc:
            raise ModelError(f"unknown DMV-CNN model_mode {mode_text!r}; use one of "
                             f"{[m.value for m in DMVMode]}") from exc
        return cls(input_channels=channels, mode=mode)


def resnet22(input_channels: int = 1) -> ResNetV2:
    """The DMV-CNN single-view column (Fig. 4): ResNet-22 with an unpadded first conv."""
    return ResNetV2(in_channels=input_channels, first_padding=0)


class ViewTensors(NamedTuple):
    """One tensor per standard view (batch first)."""

    l_cc: Tensor
    r_cc: Tensor
    l_mlo: Tensor
    r_mlo: Tensor


class BreastProbabilities(NamedTuple):
    """Probabilities (N,) of a malignant / benign finding per breast."""

    left_benign: Tensor
    left_malignant: Tensor
    right_benign: Tensor
    right_malignant: Tensor

    @staticmethod
    def mean(a: BreastProbabilities, b: BreastProbabilities) -> BreastProbabilities:
        return BreastProbabilities(*((x + y) / 2 for x, y in zip(a, b, strict=True)))


class SplitBreastOutput(NamedTuple):
    """View-wise model output.

    ``cc_logprob``/``mlo_logprob`` (N, 4, 2) are the reference's log-softmax outputs (rows
    left_benign, right_benign, left_malignant, right_malignant; columns negative,
    positive). ``cc``/``mlo`` are those branches' probabilities, ``breast`` their mean
    (the paper's inference rule). ``features`` are the average-pooled column outputs (N, 256).
    """

    cc_logprob: Tensor
    mlo_logprob: Tensor
    cc: BreastProbabilities
    mlo: BreastProbabilities
    breast: BreastProbabilities
    features: ViewTensors


class ImageWiseOutput(NamedTuple):
    """Image-wise model output.

    ``logprob`` per view (N, 4, 2): the log-softmax of the 8-output layer. ``benign`` and
    ``malignant`` per view (N,) come from its first two rows (as the single-image model
    reads them); ``breast`` averages each breast's CC and MLO views.
    """

    logprob: ViewTensors
    benign: ViewTensors
    malignant: ViewTensors
    breast: BreastProbabilities
    features: ViewTensors


class SingleImageOutput(NamedTuple):
    """Single-image model output: ``logprob`` (N, 2, 2) rows (benign, malignant), columns
    (negative, positive); ``benign``/``malignant`` (N,) probabilities; ``features`` (N, 256)."""

    logprob: Tensor
    benign: Tensor
    malignant: Tensor
    features: Tensor


def _check_input(x: Tensor, channels: int, name: str) -> None:
    if x.dim() != 4 or x.shape[1] != channels:
        raise ModelError(
            f"DMV-CNN expects {name} as (N, {channels}, H, W), got {tuple(x.shape)}"
        )


def _positive(logprob: Tensor, row: int) -> Tensor:
    return logprob[:, row, POSITIVE].exp()


def _breast_from_rows(logprob: Tensor) -> BreastProbabilities:
    return BreastProbabilities(
        left_benign=_positive(logprob, ROW_LEFT_BENIGN),
        left_malignant=_positive(logprob, ROW_LEFT_MALIGNANT),
        right_benign=_positive(logprob, ROW_RIGHT_BENIGN),
        right_malignant=_positive(logprob, ROW_RIGHT_MALIGNANT),
    )


class OutputLayer(nn.Module):
    """Linear layer to ``rows x 2`` outputs, log-softmax over each row (key ``fc_layer``)."""

    def __init__(self, in_features: int, rows: int) -> None:
        super().__init__()
        self.rows = rows
        self.fc_layer = nn.Linear(in_features, rows * 2)

    def forward(self, h: Tensor) -> Tensor:
        logits = self.fc_layer(h).view(h.shape[0], self.rows, 2)
        return torch.log_softmax(logits, dim=-1)


_CC_ALIASES = ("cc", "l_cc", "r_cc")
_MLO_ALIASES = ("mlo", "l_mlo", "r_mlo")


class FourViewResNet(nn.Module):
    """Two ResNet-22 columns (CC, MLO) shared by the left and right views.

    Registered as ``cc``, ``mlo``, ``l_cc``, ``l_mlo``, ``r_cc``, ``r_mlo`` (the
    checkpoint's order); ``l_cc``/``r_cc`` are ``cc`` itself, likewise for MLO.
    ``batch_sides``: run the L and R views of an angle as one batch (None: on accelerators
    only, see :meth:`pooled`).
    """

    def __init__(self, input_channels: int = 1, batch_sides: bool | None = None) -> None:
        super().__init__()
        self.input_channels = input_channels
        self.batch_sides = batch_sides
        self.cc = resnet22(input_channels)
        self.mlo = resnet22(input_channels)
        self.l_cc = self.cc
        self.l_mlo = self.mlo
        self.r_cc = self.cc
        self.r_mlo = self.mlo
        self.register_load_state_dict_pre_hook(_check_tied_aliases)
        channels_last_weights(self)  # NHWC convolutions: faster on the CPU (benchmarks/dmv.py)

    def column(self, view: View) -> ResNetV2:
        return self.cc if View(view) is View.CC else self.mlo

    def pooled(self, column: ResNetV2, *views: Tensor) -> list[Tensor]:
        """Average-pooled features (N, 256) of views that share ``column``.

        By default, views of one size run as a single batch on an accelerator and one after
        the other on the CPU, where a batch of two full-size views was measured slower
        (``benchmarks/dmv.py``); the results are the same either way.
        """
        for x in views:
            _check_input(x, self.input_channels, "each view")
        same_size = len({tuple(x.shape[1:]) for x in views}) == 1
        batch = (views[0].device.type != "cpu") if self.batch_sides is None else self.batch_sides
        if len(views) > 1 and same_size and batch:
            pooled = column(torch.cat(views)).mean(dim=(2, 3))
            return list(pooled.split([x.shape[0] for x in views]))
        return [column(x).mean(dim=(2, 3)) for x in views]

    def forward(self, l_cc: Tensor, r_cc: Tensor, l_mlo: Tensor, r_mlo: Tensor) -> ViewTensors:
        f_lcc, f_rcc = self.pooled(self.cc, l_cc, r_cc)
        f_lmlo, f_rmlo = self.pooled(self.mlo, l_mlo, r_mlo)
        return ViewTensors(f_lcc, f_rcc, f_lmlo, f_rmlo)


def _check_tied_aliases(module: nn.Module, state_dict: Mapping[str, Tensor], prefix: str,
                        *_: Any) -> None:
    """Refuse a checkpoint whose aliases of one shared column hold different tensors."""
    for group in (_CC_ALIASES, _MLO_ALIASES):
        first = f"{prefix}{group[0]}."
        for key, tensor in state_dict.items():
            if not key.startswith(first):
                continue
            suffix = key[len(first):]
            for alias in group[1:]:
                other = state_dict.get(f"{prefix}{alias}.{suffix}")
                if other is not None and (other.shape != tensor.shape
                                          or not torch.equal(other, tensor)):
                    raise WeightsError(
                        f"weights {prefix}{alias}.{suffix} differ from {key}: the L/R columns "
                        "of DMV-CNN are tied, so every alias must hold the same tensor "
                        "(is this a checkpoint of another model?)"
                    )


def _float32_heads(like: Tensor) -> torch.autocast:
    """Autocast off on ``like``'s device: the small heads and log-softmax run in float32."""
    return torch.autocast(device_type=like.device.type, enabled=False)


class SplitBreastModel(nn.Module):
    """The view-wise DMV-CNN (the published ``sample_image_model.p`` /
    ``sample_imageheatmaps_model.p``)."""

    def __init__(self, input_channels: int = 1) -> None:
        super().__init__()
        self.four_view_resnet = FourViewResNet(input_channels)
        self.fc1_cc = nn.Linear(2 * HIDDEN, 2 * HIDDEN)
        self.fc1_mlo = nn.Linear(2 * HIDDEN, 2 * HIDDEN)
        self.output_layer_cc = OutputLayer(2 * HIDDEN, 4)
        self.output_layer_mlo = OutputLayer(2 * HIDDEN, 4)

    def forward(self, l_cc: Tensor, r_cc: Tensor, l_mlo: Tensor,
                r_mlo: Tensor) -> SplitBreastOutput:
        features = self.four_view_resnet(l_cc, r_cc, l_mlo, r_mlo)
        with _float32_heads(l_cc):
            f = ViewTensors(*(t.float() for t in features))
            h_cc = torch.relu(self.fc1_cc(torch.cat([f.l_cc, f.r_cc], dim=1)))
            h_mlo = torch.relu(self.fc1_mlo(torch.cat([f.l_mlo, f.r_mlo], dim=1)))
            cc_logprob = self.output_layer_cc(h_cc)
            mlo_logprob = self.output_layer_mlo(h_mlo)
        cc = _breast_from_rows(cc_logprob)
        mlo = _breast_from_rows(mlo_logprob)
        return SplitBreastOutput(
            cc_logprob=cc_logprob,
            mlo_logprob=mlo_logprob,
            cc=cc,
            mlo=mlo,
            breast=BreastProbabilities.mean(cc, mlo),
            features=f,
        )


_VIEW_KEYS = ("lcc", "rcc", "lmlo", "rmlo")


class ImageBreastModel(nn.Module):
    """The image-wise DMV-CNN (``ImageOnly__ModeImage_weights.p`` layout)."""

    def __init__(self, input_channels: int = 1) -> None:
        super().__init__()
        self.four_view_resnet = FourViewResNet(input_channels)
        self.fc1_lcc = nn.Linear(HIDDEN, HIDDEN)
        self.fc1_rcc = nn.Linear(HIDDEN, HIDDEN)
        self.fc1_lmlo = nn.Linear(HIDDEN, HIDDEN)
        self.fc1_rmlo = nn.Linear(HIDDEN, HIDDEN)
        self.output_layer_lcc = OutputLayer(HIDDEN, 4)
        self.output_layer_rcc = OutputLayer(HIDDEN, 4)
        self.output_layer_lmlo = OutputLayer(HIDDEN, 4)
        self.output_layer_rmlo = OutputLayer(HIDDEN, 4)

    def forward(self, l_cc: Tensor, r_cc: Tensor, l_mlo: Tensor,
                r_mlo: Tensor) -> ImageWiseOutput:
        features = self.four_view_resnet(l_cc, r_cc, l_mlo, r_mlo)
        logprobs = []
        with _float32_heads(l_cc):
            f = ViewTensors(*(t.float() for t in features))
            for key, feat in zip(_VIEW_KEYS, f, strict=True):
                fc1: nn.Module = getattr(self, f"fc1_{key}")
                head: nn.Module = getattr(self, f"output_layer_{key}")
                logprobs.append(head(torch.relu(fc1(feat))))
        logprob = ViewTensors(*logprobs)
        benign = ViewTensors(*(_positive(lp, ROW_BENIGN) for lp in logprob))
        malignant = ViewTensors(*(_positive(lp, ROW_MALIGNANT) for lp in logprob))
        breast = BreastProbabilities(
            left_benign=(benign.l_cc + benign.l_mlo) / 2,
            left_malignant=(malignant.l_cc + malignant.l_mlo) / 2,
            right_benign=(benign.r_cc + benign.r_mlo) / 2,
            right_malignant=(malignant.r_cc + malignant.r_mlo) / 2,
        )
        return ImageWiseOutput(logprob=logprob, benign=benign, malignant=malignant,
                               breast=breast, features=f)


class SingleImageBreastModel(nn.Module):
    """One view on its own: a column, ``fc1`` and a (2, 2) output layer."""

    def __init__(self, input_channels: int = 1) -> None:
        super().__init__()
        self.input_channels = input_channels
        self.view_resnet = resnet22(input_channels)
        channels_last_weights(self.view_resnet)
        self.fc1 = nn.Linear(HIDDEN, HIDDEN)
        self.output_layer = OutputLayer(HIDDEN, 2)

    def forward(self, x: Tensor) -> SingleImageOutput:
        _check_input(x, self.input_channels, "the image")
        features = self.view_resnet(x).mean(dim=(2, 3))
        with _float32_heads(x):
            f = features.float()
            logprob = self.output_layer(torch.relu(self.fc1(f)))
        return SingleImageOutput(logprob=logprob, benign=_positive(logprob, ROW_BENIGN),
                                 malignant=_positive(logprob, ROW_MALIGNANT), features=f)


def single_image_state(image_wise_state: Mapping[str, Tensor], laterality: Laterality,
                       view: View) -> dict[str, Tensor]:
    """The :class:`SingleImageBreastModel` state for one view of an image-wise checkpoint:
    the view's column, its ``fc1`` and the first 4 rows of its output layer."""
    angle = View(view).value.lower()
    key = f"{Laterality(laterality).value.lower()}{angle}"
    column = f"four_view_resnet.{angle}."
    state = {f"view_resnet.{k[len(column):]}": v for k, v in image_wise_state.items()
             if k.startswith(column)}
    try:
        state["fc1.weight"] = image_wise_state[f"fc1_{key}.weight"]
        state["fc1.bias"] = image_wise_state[f"fc1_{key}.bias"]
        state["output_layer.fc_layer.weight"] = (
            image_wise_state[f"output_layer_{key}.fc_layer.weight"][:4])
        state["output_layer.fc_layer.bias"] = (
            image_wise_state[f"output_layer_{key}.fc_layer.bias"][:4])
    except KeyError as exc:
        raise WeightsError(f"image-wise weights lack {exc.args[0]!r}; cannot build the "
                           f"single-image model for {laterality}-{angle.upper()}") from exc
    return state


def build_dmv_cnn(config: DMVConfig) -> nn.Module:
    """The registry builder: the view-wise or image-wise model."""
    if config.mode is DMVMode.IMAGE_WISE:
        return ImageBreastModel(config.input_channels)
    return SplitBreastModel(config.input_channels)
