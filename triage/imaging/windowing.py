"""Test-time window placement, zero padding and standardisation (reference behaviour).

From the fixtures README ("Test-time window placement and padding"), pinned by
``padding``, ``final_window`` and ``final_input`` in the fixtures:

* window = (cy - h//2, cy - h//2 + h, cx - w//2, cx - w//2 + w) on the flipped crop;
* if H_c < h: CC pads floor((h - H_c)/2) zero rows on top and the rest below, MLO pads
  all h - H_c rows below; rows become [0, h). If W_c < w: w - W_c zero columns on the
  right; columns become [0, w). Equal sizes are not padded;
* then the window is shifted inside the padded image;
* standardisation in float32 over the window (padding included):
  ``x -= mean; x /= max(std, 1e-5)`` (population std), on a C-ordered copy, which is
  what reproduces the reference's float32 bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from triage.vocabulary import View

STD_FLOOR = 1e-5


@dataclass(frozen=True)
class Padding:
    """Zero rows/columns added to the flipped crop before windowing (never on the left)."""

    top: int = 0
    bottom: int = 0
    right: int = 0

    @property
    def left(self) -> int:
        return 0

    @property
    def any(self) -> bool:
        return bool(self.top or self.bottom or self.right)

    def apply(self, image: np.ndarray) -> np.ndarray:
        if not self.any:
            return image
        return np.pad(image, ((self.top, self.bottom), (0, self.right)))


@dataclass(frozen=True)
class Window:
    """A window (top, bottom, left, right), bottom/right exclusive."""

    top: int
    bottom: int
    left: int
    right: int

    @property
    def size(self) -> tuple[int, int]:
        return self.bottom - self.top, self.right - self.left

    def as_tuple(self) -> tuple[int, int, int, int]:
        return self.top, self.bottom, self.left, self.right

    def cut(self, image: np.ndarray) -> np.ndarray:
        return image[self.top : self.bottom, self.left : self.right]


def window_at_center(center: tuple[int, int], size: tuple[int, int]) -> Window:
    """The window of ``size`` around ``center`` (may lie partly outside the image)."""
    height, width = size
    top = center[0] - height // 2
    left = center[1] - width // 2
    return Window(top, top + height, left, left + width)


def shift_inside(window: Window, shape: tuple[int, int]) -> Window:
    """Shift a window (no larger than ``shape``) so that it lies inside the image."""
    height, width = window.size
    top, bottom, left, right = window.as_tuple()
    if top < 0:
        top, bottom = 0, height
    elif bottom > shape[0]:
        top, bottom = shape[0] - height, shape[0]
    if left < 0:
        left, right = 0, width
    elif right > shape[1]:
        left, right = shape[1] - width, shape[1]
    return Window(top, bottom, left, right)


def inference_window(
    crop_shape: tuple[int, int], view: View, center: tuple[int, int], size: tuple[int, int]
) -> tuple[Padding, Window]:
    """Padding of the flipped crop and the model window in the padded image."""
    height, width = size
    crop_height, crop_width = crop_shape
    window = window_at_center(center, size)
    pad_top = pad_bottom = pad_right = 0
    top, bottom, left, right = window.as_tuple()
    if crop_height < height:
        missing = height - crop_height
        if View(view) is View.CC:
            pad_top = missing // 2
            pad_bottom = missing - pad_top
        else:
            pad_bottom = missing
        top, bottom = 0, height
    if crop_width < width:
        pad_right = width - crop_width
        left, right = 0, width
    padding = Padding(pad_top, pad_bottom, pad_right)
    padded_shape = (crop_height + pad_top + pad_bottom, crop_width + pad_right)
    return padding, shift_inside(Window(top, bottom, left, right), padded_shape)


def standardize(image: np.ndarray) -> np.ndarray:
    """``(x - mean) / max(std, 1e-5)`` in float32 on a C-ordered copy (population std)."""
    out = np.array(image, dtype=np.float32, order="C", copy=True)
    out -= out.mean()
    std = out.std()
    out /= std if std > STD_FLOOR else np.float32(STD_FLOOR)
    return out


def scaled_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """Input size at ``scale`` (rounded half to even, e.g. 2677x1942 at 0.25 -> 669x486)."""
    return round(size[0] * scale), round(size[1] * scale)


def resize_input(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a model input to ``size`` (rows, columns) with ``cv2.INTER_AREA``, the
    down-scaling the DMV-CNN reduced-resolution fixtures use (explicit target size, not
    ``fx``/``fy``: OpenCV's integer-factor shortcut gives different values)."""
    return np.asarray(
        cv2.resize(
            np.ascontiguousarray(image, dtype=np.float32),
            (int(size[1]), int(size[0])),
            interpolation=cv2.INTER_AREA,
        )
    )
