"""Test-time augmentation: the papers' training-style random model window (off by default).

Wu et al. (DMV-CNN) and Shen et al. (GMIC) average predictions over random windows that
move the test-time window by up to ``max_crop_noise`` pixels and change its borders by up
to ``max_crop_size_noise`` pixels, then resize it back to the input size. The rules below
were reconstructed from the fixtures' ``seeded_augmentation_examples`` (numpy
``RandomState(0)``, noise (100, 100) and 100) and reproduce every recorded window and the
float32 bytes of every recorded output:

1. Room for the noise, with m_y = max_crop_noise[0] + max_crop_size_noise (m_x likewise):
   CC whose crop height is < h + 2 m_y: zero-pad to h + 2 m_y rows, floor half on top, and
   put the window rows at [m_y, m_y + h). MLO whose crop height is < h + m_y: zero-pad to
   h + m_y rows at the bottom, rows [0, h). Crop width < w + m_x: zero-pad to w + m_x
   columns on the right, columns [0, w). Otherwise the window is centred on the best
   centre. Then it is shifted inside the padded image.
2. Location noise (only drawn when max_crop_noise is non-zero): u = uniform(-1, 1, 2);
   the window moves by round(u_y * min(noise_y, room below)) rows when u_y >= 0, else by
   round(u_y * min(noise_y, room above)); columns likewise with right/left room.
3. Size noise (only drawn when max_crop_size_noise > 0): v = uniform(-1, 1, 4);
   b = min(max_crop_size_noise, room above, below, left, right); top += round(v0 b),
   bottom += round(v1 b), left += round(v2 b w/h), right += round(v3 b w/h).
4. The window is cut and, when its size changed, resized to the input size with
   ``cv2.resize(..., INTER_CUBIC)``, then standardised like the test-time input.

Not pinned by the fixtures (seed 0 draws only positive location multipliers, and every
fixture crop is within the CC padding threshold): the room used for negative multipliers,
the CC padding threshold for crops between h + m_y and h + 2 m_y rows, and rounding of
exact halves (numpy rounds half to even).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from triage.imaging.prepare import PreparedView
from triage.imaging.windowing import Padding, Window, shift_inside, standardize, window_at_center
from triage.results import InputFrame
from triage.vocabulary import View

DEFAULT_MAX_CROP_NOISE: tuple[int, int] = (100, 100)
DEFAULT_MAX_CROP_SIZE_NOISE = 100


@dataclass(frozen=True)
class AugmentedWindow:
    """One random window on the flipped crop (windows in padded-crop coordinates)."""

    padding: Padding
    location_window: Window  # after the location noise
    window: Window  # after the size noise: the pixels actually used
    image: np.ndarray  # float32 (h, w), not standardised

    @property
    def resized(self) -> bool:
        return self.window.size != self.image.shape


def _rounded(value: float) -> int:
    return int(np.round(value))


def random_window(
    flipped_crop: np.ndarray,
    view: View,
    center: tuple[int, int],
    input_size: tuple[int, int],
    rng: np.random.RandomState,
    *,
    max_crop_noise: tuple[int, int] = DEFAULT_MAX_CROP_NOISE,
    max_crop_size_noise: int = DEFAULT_MAX_CROP_SIZE_NOISE,
) -> AugmentedWindow:
    """Draw one training-style window (rules in the module docstring) with ``rng``."""
    height, width = input_size
    crop_height, crop_width = flipped_crop.shape
    noise_y, noise_x = int(max_crop_noise[0]), int(max_crop_noise[1])
    size_noise = int(max_crop_size_noise)
    multipliers = np.zeros(2)
    if noise_y or noise_x:
        multipliers = rng.uniform(low=-1.0, high=1.0, size=2)

    window = window_at_center(center, input_size)
    top, bottom, left, right = window.as_tuple()
    room_y, room_x = noise_y + size_noise, noise_x + size_noise
    pad_top = pad_bottom = pad_right = 0
    if View(view) is View.CC:
        if crop_height < height + 2 * room_y:
            missing = height + 2 * room_y - crop_height
            pad_top = missing // 2
            pad_bottom = missing - pad_top
            top, bottom = room_y, room_y + height
    elif crop_height < height + room_y:
        pad_bottom = height + room_y - crop_height
        top, bottom = 0, height
    if crop_width < width + room_x:
        pad_right = width + room_x - crop_width
        left, right = 0, width
    padding = Padding(pad_top, pad_bottom, pad_right)
    padded = padding.apply(flipped_crop)
    padded_height, padded_width = padded.shape
    window = shift_inside(Window(top, bottom, left, right), (padded_height, padded_width))

    # Location noise, bounded by the room on the side the window moves to.
    u_y, u_x = float(multipliers[0]), float(multipliers[1])
    room_down, room_up = padded_height - window.bottom, window.top
    room_right, room_left = padded_width - window.right, window.left
    d_y = _rounded(u_y * min(noise_y, room_down if u_y >= 0 else room_up))
    d_x = _rounded(u_x * min(noise_x, room_right if u_x >= 0 else room_left))
    located = Window(window.top + d_y, window.bottom + d_y, window.left + d_x, window.right + d_x)

    final = located
    if size_noise > 0:
        v = rng.uniform(low=-1.0, high=1.0, size=4)
        bound = min(
            size_noise,
            located.top,
            padded_height - located.bottom,
            located.left,
            padded_width - located.right,
        )
        bound_x = bound * width / height
        final = Window(
            located.top + _rounded(v[0] * bound),
            located.bottom + _rounded(v[1] * bound),
            located.left + _rounded(v[2] * bound_x),
            located.right + _rounded(v[3] * bound_x),
        )

    image = final.cut(padded)
    if final.size != (height, width):
        image = cv2.resize(
            np.ascontiguousarray(image, dtype=np.float32),
            (width, height),
            interpolation=cv2.INTER_CUBIC,
        )
    else:
        image = np.array(image, dtype=np.float32, order="C", copy=True)
    return AugmentedWindow(padding=padding, location_window=located, window=final, image=image)


@dataclass(frozen=True)
class AugmentedInput:
    """A standardised augmented model input and where it came from."""

    array: np.ndarray  # float32 (h, w), standardised
    sample: AugmentedWindow
    base_frame: InputFrame  # the test-time frame of the same view (crop and flip)

    def to_source(self, row: float, col: float) -> tuple[float, float]:
        """Map a model-input pixel (centre convention of cv2.resize) to the source image."""
        window = self.sample.window
        win_h, win_w = window.size
        in_h, in_w = self.array.shape
        padded_row = window.top + (row + 0.5) * win_h / in_h - 0.5
        padded_col = window.left + (col + 0.5) * win_w / in_w - 0.5
        frame = InputFrame(
            source_shape=self.base_frame.source_shape,
            crop_top=self.base_frame.crop_top,
            crop_left=self.base_frame.crop_left,
            cropped_shape=self.base_frame.cropped_shape,
            flipped=self.base_frame.flipped,
            pad_top=self.sample.padding.top,
            pad_left=0,
            window_top=0,
            window_left=0,
            input_shape=(in_h, in_w),
        )
        return frame.to_source(padded_row, padded_col)


def sample_windows(
    prepared: PreparedView,
    n: int,
    seed: int,
    *,
    max_crop_noise: tuple[int, int] = DEFAULT_MAX_CROP_NOISE,
    max_crop_size_noise: int = DEFAULT_MAX_CROP_SIZE_NOISE,
) -> list[AugmentedInput]:
    """``n`` seeded augmented inputs of a prepared view.

    One ``numpy.random.RandomState(seed)`` draws the windows in order, so the first one
    equals the reference's single draw with that seed and the list is reproducible.
    """
    if n < 0:
        raise ValueError(f"number of augmented windows must be >= 0, got {n}")
    rng = np.random.RandomState(seed)
    samples = []
    for _ in range(n):
        sample = random_window(
            prepared.flipped_crop,
            prepared.view,
            prepared.best_center,
            prepared.input_size,
            rng,
            max_crop_noise=max_crop_noise,
            max_crop_size_noise=max_crop_size_noise,
        )
        samples.append(
            AugmentedInput(
                array=standardize(sample.image), sample=sample, base_frame=prepared.frame
            )
        )
    return samples
