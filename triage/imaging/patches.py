"""Patch grid of the DMV-CNN patch classifier (heatmap generation), as the reference does it.

From the fixtures README ("Heatmap patch grid"), pinned by ``patch_classifier_summary.json``
and ``patch_classifier_io.npz``:

* the image is the cropped mammogram turned to face right, standardised as a whole in
  float64: ``(x - mean) / max(std, 1e-5)``;
* along an axis of length n (n >= patch), m = (n - patch) // stride + 1 and
  r = (n - patch) % stride. r = 0: m - 1 strides of ``stride``. Otherwise m strides:
  o = stride - r, base = stride - o // m, and o % m of them, at the positions
  ``rng.sample(range(m), o % m)``, are base - 1, the rest base; they add up to n - patch;
* one CPython ``random.Random(seed)`` draws, per image in order (L-CC, R-CC, L-MLO, R-MLO),
  the row list first and then the column list. A private ``random.Random`` instance is used,
  never the global ``random`` state;
* patches go column block by column block: for each column offset (left to right) every row
  offset (top to bottom); patch k covers image[r:r+patch, c:c+patch].

Naming note: the reference calls the row list ``width_stride_list`` and the column list
``length_stride_list`` (its "width" is the image height); ``PatchGrid`` says rows/columns.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from triage.errors import PreprocessingError

PATCH_SIZE = 256
PATCH_STRIDE = 70
STD_FLOOR = 1e-5


def stride_list(
    length: int, rng: random.Random, *, patch_size: int = PATCH_SIZE, stride: int = PATCH_STRIDE
) -> list[int]:
    """Strides between consecutive patches along one axis (they sum to length - patch)."""
    if length < patch_size:
        raise PreprocessingError(
            f"image axis of {length} pixels is shorter than the {patch_size}-pixel patch"
        )
    span = length - patch_size
    count = span // stride + 1
    remainder = span % stride
    if remainder == 0:
        return [stride] * (count - 1)
    overshoot = stride - remainder
    base = stride - overshoot // count
    strides = [base] * count
    for position in rng.sample(range(count), overshoot % count):
        strides[position] = base - 1
    return strides


@dataclass(frozen=True)
class PatchGrid:
    """Patch offsets of one image, in the reference's order."""

    shape: tuple[int, int]
    patch_size: int
    row_strides: tuple[int, ...]
    col_strides: tuple[int, ...]

    @property
    def row_offsets(self) -> tuple[int, ...]:
        return tuple(int(v) for v in np.concatenate([[0], np.cumsum(self.row_strides)]))

    @property
    def col_offsets(self) -> tuple[int, ...]:
        return tuple(int(v) for v in np.concatenate([[0], np.cumsum(self.col_strides)]))

    @property
    def offsets(self) -> list[tuple[int, int]]:
        """(row, col) upper-left corners: for each column offset, every row offset."""
        rows = self.row_offsets
        return [(r, c) for c in self.col_offsets for r in rows]

    def __len__(self) -> int:
        return (len(self.row_strides) + 1) * (len(self.col_strides) + 1)


def patch_grid(
    shape: tuple[int, int],
    rng: random.Random,
    *,
    patch_size: int = PATCH_SIZE,
    stride: int = PATCH_STRIDE,
) -> PatchGrid:
    """The grid of one image, drawing the row list and then the column list from ``rng``."""
    rows = stride_list(int(shape[0]), rng, patch_size=patch_size, stride=stride)
    cols = stride_list(int(shape[1]), rng, patch_size=patch_size, stride=stride)
    return PatchGrid(
        shape=(int(shape[0]), int(shape[1])),
        patch_size=patch_size,
        row_strides=tuple(rows),
        col_strides=tuple(cols),
    )


def exam_patch_grids(
    shapes: Sequence[tuple[int, int]],
    seed: int = 0,
    *,
    patch_size: int = PATCH_SIZE,
    stride: int = PATCH_STRIDE,
) -> list[PatchGrid]:
    """Grids of an exam's images in the given order (the reference: L-CC, R-CC, L-MLO,
    R-MLO) from one ``random.Random(seed)``."""
    rng = random.Random(seed)
    return [patch_grid(s, rng, patch_size=patch_size, stride=stride) for s in shapes]


def standardize_whole(flipped_crop: np.ndarray) -> np.ndarray:
    """The patch classifier's image standardisation: whole image, float64."""
    image = np.asarray(flipped_crop, dtype=np.float64)
    std = float(image.std())
    return (image - image.mean()) / max(std, STD_FLOOR)


def extract_patches(
    image: np.ndarray, grid: PatchGrid, indices: Sequence[int] | None = None
) -> np.ndarray:
    """Patches (N, patch, patch) of ``image`` at the grid offsets (all, or ``indices``)."""
    if tuple(image.shape) != grid.shape:
        raise PreprocessingError(
            f"patch grid was made for an image of {grid.shape}, got {tuple(image.shape)}"
        )
    offsets = grid.offsets
    chosen = range(len(offsets)) if indices is None else [int(i) for i in indices]
    size = grid.patch_size
    patches = [
        image[offsets[i][0] : offsets[i][0] + size, offsets[i][1] : offsets[i][1] + size]
        for i in chosen
    ]
    if not patches:
        return np.empty((0, size, size), dtype=image.dtype)
    return np.stack(patches)
