"""Dense heatmaps from the patch classifier (Wu et al. 2019, section IV-B).

The patch classifier (:mod:`triage.models.densenet`) is applied to every patch of a grid
laid over the cropped, right-facing, standardised mammogram; each pixel of the malignant
(softmax column 0) and benign (column 1) heatmaps is the mean of the probabilities of all
patches covering it (fixtures README, "Heatmap patch grid").

The grid itself (offsets drawn as the reference draws them) is made by
:func:`triage.imaging.patch_grid`; this module only needs its row and column offsets and
the patch size (:class:`PatchLayout`, which ``PatchGrid`` satisfies), so ``models`` does not
import ``imaging``.

How it runs: the patch corners are built once as a tensor; each batch of patches is
gathered from the image on its device with one advanced-indexing operation (no per-patch
Python copies), run through the model, and the probabilities are written into one
(P, classes) tensor. The average over covering patches is separable because the grid is a
product of row and column offsets: with indicator matrices R (H x rows) and C (W x cols),
``sum = R @ P_k @ C^T`` and ``count = R.sum(1) ⊗ C.sum(1)``, computed in float64.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol

import torch
from torch import Tensor

from triage.errors import ModelError
from triage.models.densenet import BENIGN_COLUMN, MALIGNANT_COLUMN, PatchOutput

#: Patches per forward pass by default, per device type. On the CPU small batches are
#: fastest (measured with ``benchmarks/dmv.py``: 4-8 patches per forward beat both one at a
#: time and 20-32); accelerators want large ones.
CPU_BATCH_SIZE = 8
ACCELERATOR_BATCH_SIZE = 128


def default_batch_size(device: torch.device) -> int:
    """Patches per forward pass when the caller does not say."""
    return CPU_BATCH_SIZE if device.type == "cpu" else ACCELERATOR_BATCH_SIZE


class PatchLayout(Protocol):
    """Patch offsets of one image (``triage.imaging.PatchGrid`` is one)."""

    @property
    def patch_size(self) -> int: ...

    @property
    def row_offsets(self) -> Sequence[int]: ...

    @property
    def col_offsets(self) -> Sequence[int]: ...


class Heatmaps(NamedTuple):
    """``malignant`` and ``benign`` (H, W) float32 heatmaps of one image, and every patch's
    probabilities (P, classes) in the grid's order (column block by column block)."""

    malignant: Tensor
    benign: Tensor
    patch_probabilities: Tensor


PatchModel = Callable[[Tensor], PatchOutput]


def _check_layout(layout: PatchLayout, shape: tuple[int, int]) -> None:
    size = int(layout.patch_size)
    rows, cols = list(layout.row_offsets), list(layout.col_offsets)
    if not rows or not cols:
        raise ModelError("the patch grid has no patches")
    if min(rows) < 0 or min(cols) < 0 or max(rows) + size > shape[0] or (
            max(cols) + size > shape[1]):
        raise ModelError(
            f"the patch grid ({size}-pixel patches up to row {max(rows)}, column "
            f"{max(cols)}) does not fit an image of {shape[0]}x{shape[1]}; was it made for "
            "another image?"
        )


def patch_corners(layout: PatchLayout, device: torch.device | None = None) -> Tensor:
    """Upper-left (row, col) of every patch (P, 2), int64: for each column offset (left to
    right) every row offset (top to bottom), the reference's order."""
    rows = torch.as_tensor(list(layout.row_offsets), dtype=torch.int64, device=device)
    cols = torch.as_tensor(list(layout.col_offsets), dtype=torch.int64, device=device)
    grid_cols, grid_rows = torch.meshgrid(cols, rows, indexing="ij")
    return torch.stack([grid_rows.reshape(-1), grid_cols.reshape(-1)], dim=1)


def gather_patches(image: Tensor, corners: Tensor, size: int) -> Tensor:
    """Patches (B, size, size) of a 2-D ``image`` at ``corners`` (B, 2), by indexing."""
    span = torch.arange(size, device=image.device)
    rows = corners[:, 0, None] + span  # (B, size)
    cols = corners[:, 1, None] + span
    return image[rows[:, :, None], cols[:, None, :]]


def patch_probabilities(model: PatchModel, image: Tensor, layout: PatchLayout,
                        batch_size: int | None = None) -> Tensor:
    """Softmax (P, classes) of every patch of ``image`` (H, W), in batches of
    ``batch_size`` (default: :func:`default_batch_size`) gathered on the image's device."""
    if image.dim() != 2:
        raise ModelError(f"heatmaps need one 2-D image, got shape {tuple(image.shape)}")
    if batch_size is None:
        batch_size = default_batch_size(image.device)
    if batch_size < 1:
        raise ModelError(f"batch_size must be at least 1, got {batch_size}")
    _check_layout(layout, (int(image.shape[0]), int(image.shape[1])))
    image = image.float()
    corners = patch_corners(layout, image.device)
    size = int(layout.patch_size)
    outputs: list[Tensor] = []
    with torch.inference_mode():
        for start in range(0, corners.shape[0], batch_size):
            patches = gather_patches(image, corners[start:start + batch_size], size)
            outputs.append(model(patches[:, None]).probabilities.float())
    return torch.cat(outputs)


def _coverage(offsets: Sequence[int], size: int, length: int, device: torch.device) -> Tensor:
    """Indicator (length, len(offsets)) float64: pixel i lies in the patch at offset j."""
    starts = torch.as_tensor(list(offsets), dtype=torch.int64, device=device)
    pixel = torch.arange(length, device=device)[:, None]
    return ((pixel >= starts) & (pixel < starts + size)).to(torch.float64)


def coverage_mean(values: Tensor, layout: PatchLayout, shape: tuple[int, int]) -> Tensor:
    """Per pixel, the mean of ``values`` (P, K) over the patches covering it: (K, H, W)
    float32 (0 where no patch covers a pixel)."""
    rows, cols = list(layout.row_offsets), list(layout.col_offsets)
    if values.dim() != 2 or values.shape[0] != len(rows) * len(cols):
        raise ModelError(f"expected ({len(rows) * len(cols)}, K) patch values, got "
                         f"{tuple(values.shape)}")
    size = int(layout.patch_size)
    device = values.device
    row_cover = _coverage(rows, size, shape[0], device)  # (H, n_r)
    col_cover = _coverage(cols, size, shape[1], device)  # (W, n_c)
    per_class = values.to(torch.float64).reshape(len(cols), len(rows), -1).permute(2, 1, 0)
    sums = (row_cover @ per_class) @ col_cover.T  # (K, H, W)
    counts = row_cover.sum(dim=1)[:, None] * col_cover.sum(dim=1)[None, :]
    return (sums / counts.clamp(min=1.0)).float()


def generate_heatmaps(model: PatchModel, image: Tensor, layout: PatchLayout,
                      batch_size: int | None = None) -> Heatmaps:
    """Malignant and benign heatmaps of one standardised, right-facing cropped image
    (H, W) on the model's device."""
    probabilities = patch_probabilities(model, image, layout, batch_size)
    shape = (int(image.shape[0]), int(image.shape[1]))
    maps = coverage_mean(probabilities[:, [MALIGNANT_COLUMN, BENIGN_COLUMN]], layout, shape)
    return Heatmaps(malignant=maps[0], benign=maps[1], patch_probabilities=probabilities)
