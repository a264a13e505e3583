"""Breast-like pixel content: a half-ellipse breast on an exactly-zero background.

Everything is drawn in the frame of a left breast (chest wall on the image's left edge,
nipple pointing right) and mirrored for right breasts, as mammograms are hung. The values
have the MONOCHROME2 meaning (dense tissue bright); the DICOM builder inverts them for
MONOCHROME1 vendors. Content is a pure function of its arguments (seeded numpy
generators, deterministic OpenCV calls), so the same seed gives the same pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from triage.synthetic.specs import Lesion, LesionShape
from triage.synthetic.views import MammoView
from triage.vocabulary import Laterality


@dataclass(frozen=True)
class BreastGeometry:
    """Outline of the breast in the left-breast frame, in pixels (x = column, y = row)."""

    rows: int
    cols: int
    outline: tuple[tuple[float, float], ...]  # closed polygon (x, y), chest wall at x = 0
    nipple: tuple[float, float]  # (x, y)
    wall_center: float  # row of the middle of the breast on the chest wall
    wall_half: float  # half the breast's extent along the chest wall
    pectoral: tuple[float, float] | None  # (width on the top row, height on column 0)

    def polygon(self) -> np.ndarray:
        return np.asarray(self.outline, np.float32)

    def inside_distance(self, row: float, col: float) -> float:
        """Signed distance (pixels) from the outline; positive inside the breast."""
        return float(cv2.pointPolygonTest(self.polygon().reshape(-1, 1, 2),
                                          (float(col), float(row)), True))

    def in_pectoral(self, row: float, col: float, margin: float = 1.0) -> bool:
        if self.pectoral is None:
            return False
        width, height = self.pectoral
        return col / width + row / height < margin

    def point(self, depth: float, across: float) -> tuple[float, float]:
        """(row, col) at ``depth`` (0 chest wall .. 1 nipple) and ``across`` (-1 .. 1)."""
        nx, ny = self.nipple
        center = (1 - depth) * self.wall_center + depth * ny
        half = (1 - depth) * self.wall_half
        return center + across * half, depth * nx


def _bezier(p0: tuple[float, float], c: tuple[float, float], p1: tuple[float, float],
            n: int = 48) -> list[tuple[float, float]]:
    t = np.linspace(0.0, 1.0, n)
    x = (1 - t) ** 2 * p0[0] + 2 * (1 - t) * t * c[0] + t**2 * p1[0]
    y = (1 - t) ** 2 * p0[1] + 2 * (1 - t) * t * c[1] + t**2 * p1[1]
    return [(float(a), float(b)) for a, b in zip(x, y, strict=True)]


def breast_geometry(rows: int, cols: int, view: MammoView, seed: int) -> BreastGeometry:
    """The breast outline of a view; a pure function of its arguments."""
    rng = np.random.default_rng([seed, 11])
    if view.family == "CC":
        center = rows * (0.5 + rng.uniform(-0.04, 0.04))
        half = rows * rng.uniform(0.34, 0.42)
        depth = cols * rng.uniform(0.62, 0.84)
        lower = 1.0 + rng.uniform(-0.08, 0.08)  # mild asymmetry
        t = np.linspace(-np.pi / 2, np.pi / 2, 120)
        outline = [(float(depth * np.cos(a)), float(center + half * np.sin(a) * (
            lower if a > 0 else 1.0))) for a in t]
        return BreastGeometry(rows=rows, cols=cols, outline=tuple(outline),
                              nipple=(depth, center), wall_center=center,
                              wall_half=half * 0.9, pectoral=None)
    oblique = view.family == "MLO"
    pectoral_width = cols * (rng.uniform(0.26, 0.38) if oblique else rng.uniform(0.08, 0.14))
    pectoral_height = rows * rng.uniform(0.45, 0.62)
    top_x = pectoral_width * rng.uniform(1.2, 1.45)
    nipple = (cols * rng.uniform(0.6, 0.8), rows * rng.uniform(0.52, 0.62))
    bottom = rows * rng.uniform(0.86, 0.97)
    upper_curve = _bezier((top_x, 0.0), (nipple[0] * 1.02, nipple[1] * 0.3), nipple)
    lower_curve = _bezier(nipple, (nipple[0] * 0.85, bottom * 0.99), (0.0, bottom))
    outline = [(0.0, 0.0), *upper_curve, *lower_curve[1:]]
    wall_top = pectoral_height * 0.9
    return BreastGeometry(rows=rows, cols=cols, outline=tuple(outline), nipple=nipple,
                          wall_center=(wall_top + bottom) / 2, wall_half=(bottom - wall_top) / 2,
                          pectoral=(pectoral_width, pectoral_height))


def lesion_position(geometry: BreastGeometry, depth: float, across: float,
                    margin_px: float) -> tuple[int, int]:
    """A point at least ``margin_px`` inside the breast and off the pectoral muscle.

    Starts at (``depth``, ``across``) and moves towards the nipple line until it fits.
    Coordinates are (row, col) in the left-breast frame.
    """
    row, col = geometry.point(depth, across)
    for _ in range(40):
        row, col = geometry.point(depth, across)
        if (geometry.inside_distance(row, col) >= margin_px
                and not geometry.in_pectoral(row, col, margin=1.3)):
            break
        across *= 0.8
        depth = depth + 0.02 if depth < 0.6 else depth - 0.02
    return round(row), round(col)


def _smooth_noise(rng: np.random.Generator, rows: int, cols: int, cell: float) -> np.ndarray:
    """About zero-mean, unit-variance noise with structures about ``cell`` pixels wide."""
    cell = max(cell, 1.0)
    noise = rng.standard_normal(
        (math.ceil(rows / cell) + 4, math.ceil(cols / cell) + 4), dtype=np.float32)
    small: np.ndarray = cv2.GaussianBlur(noise, (0, 0), 1.0)
    # normalise before upsampling: same statistics, a fraction of the work
    small = (small - np.float32(small.mean())) / np.float32(max(float(small.std()), 1e-6))
    big: np.ndarray = cv2.resize(small, (int(small.shape[1] * cell), int(small.shape[0] * cell)),
                                 interpolation=cv2.INTER_CUBIC)
    offset = int(cell)
    return np.ascontiguousarray(big[offset:offset + rows, offset:offset + cols],
                                dtype=np.float32)


def breast_mask(geometry: BreastGeometry) -> np.ndarray:
    """255 inside the breast, 0 outside."""
    mask = np.zeros((geometry.rows, geometry.cols), np.uint8)
    shift = 4  # sub-pixel precision of OpenCV drawing: coordinates times 16
    points = np.rint(geometry.polygon() * (1 << shift)).astype(np.int32)
    cv2.fillPoly(mask, [points.reshape(-1, 1, 2)], 255, lineType=cv2.LINE_8, shift=shift)
    return mask


def _lesion_patch(lesion: Lesion, seed: int) -> tuple[np.ndarray, int]:
    """The lesion's brightness (0-1) on a square patch, and the patch half-size."""
    radius = max(float(lesion.radius_px), 2.0)
    half = math.ceil(radius * 3.2)
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1].astype(np.float32)
    dist = np.hypot(yy, xx)
    rng = np.random.default_rng([seed, 17, *lesion.center])
    if lesion.shape is LesionShape.ROUND:
        patch = np.clip(1.0 - (dist / radius) ** 2, 0.0, 1.0) ** 0.4
        return cv2.GaussianBlur(patch, (0, 0), max(radius / 12, 0.6)), half
    # spiculated: an irregular core with radiating spicules
    angle = np.arctan2(yy, xx)
    wobble = np.zeros_like(angle)
    for k in (3, 5, 7):
        wobble += rng.uniform(0.03, 0.09) * np.cos(k * angle + rng.uniform(0, 2 * np.pi))
    core = np.clip(1.0 - (dist / (0.75 * radius * (1 + wobble))) ** 2, 0.0, 1.0) ** 0.5
    spicules = np.zeros_like(core)
    thickness = max(1, round(radius / 14))
    for _ in range(int(rng.integers(10, 18))):
        theta = rng.uniform(0, 2 * np.pi)
        length = radius * rng.uniform(1.5, 3.0)
        end = (round(half + length * math.cos(theta)),
               round(half + length * math.sin(theta)))
        cv2.line(spicules, (half, half), end, 1.0, thickness=thickness, lineType=cv2.LINE_AA)
    spicules = cv2.GaussianBlur(spicules, (0, 0), max(radius / 20, 0.6))
    patch = np.maximum(core, 0.7 * np.clip(spicules * 1.5, 0.0, 1.0))
    return cv2.GaussianBlur(patch, (0, 0), max(radius / 25, 0.5)), half


def render_breast(
    rows: int,
    cols: int,
    laterality: Laterality,
    view: MammoView,
    seed: int,
    bits_stored: int,
    pixel_spacing_mm: float,
    lesion: Lesion | None = None,
) -> np.ndarray:
    """A breast image (uint16, MONOCHROME2 meaning) with values in 0..2**bits_stored-1.

    The background is exactly 0; every breast pixel is at least 1.
    """
    geometry = breast_geometry(rows, cols, view, seed)
    mask = breast_mask(geometry)
    rng = np.random.default_rng([seed, 13])
    size = max(rows, cols)

    # Full-size float32 buffers are reused in place: a 4096 x 3328 view needs ~7 of them.
    coarse = _smooth_noise(rng, rows, cols, size / 20)
    medium = _smooth_noise(rng, rows, cols, size / 90)
    fine = _smooth_noise(rng, rows, cols, size / 400)

    # fibroglandular tissue concentrates behind the nipple, fat near the skin and wall
    r = np.arange(rows, dtype=np.float32)[:, None]
    c = np.arange(cols, dtype=np.float32)[None, :]
    gland_row, gland_col = geometry.point(0.4, 0.0)
    sigma_col = np.float32(0.36 * geometry.nipple[0])
    sigma_row = np.float32(0.7 * geometry.wall_half)
    gland = ((c - np.float32(gland_col)) / sigma_col) ** 2 \
        + ((r - np.float32(gland_row)) / sigma_row) ** 2
    np.negative(gland, out=gland)
    np.exp(gland, out=gland)
    density = np.float32(rng.uniform(0.7, 1.1))  # how dense this breast is overall
    # dense = clip(gland * density * (0.6 + 0.3 coarse) + 0.06 medium gland, 0, 1)
    t = coarse
    t *= np.float32(0.3)
    t += np.float32(0.6)
    t *= density
    t += np.float32(0.06) * medium
    t *= gland
    del gland
    np.clip(t, 0.0, 1.0, out=t)
    # t = 0.30 + 0.34 dense + 0.025 medium + 0.015 fine
    t *= np.float32(0.34)
    t += np.float32(0.30)
    fine *= np.float32(0.015)
    t += fine
    scratch = fine
    np.multiply(medium, np.float32(0.025), out=scratch)
    t += scratch

    # thinner tissue at the periphery is darker; the skin line is a thin bright band
    dist: np.ndarray = cv2.distanceTransform(mask, cv2.DIST_L2, 3).astype(np.float32, copy=False)
    np.multiply(dist, np.float32(1.0 / (0.06 * min(rows, cols))), out=scratch)
    np.clip(scratch, 0.0, 1.0, out=scratch)
    np.sqrt(scratch, out=scratch)
    scratch *= np.float32(0.3)
    scratch += np.float32(0.7)
    t *= scratch
    skin_px = np.float32(max(2.0, 1.5 / pixel_spacing_mm))
    dist /= -skin_px
    dist += np.float32(1.0)
    np.clip(dist, 0.0, 1.0, out=dist)
    np.sqrt(dist, out=dist)
    dist *= np.float32(0.10)
    t += dist
    del dist

    if geometry.pectoral is not None:
        width, height = geometry.pectoral
        # muscle weight: 1 inside the triangle, a short ramp at its edge
        muscle = c / np.float32(width) + r / np.float32(height)
        np.subtract(np.float32(1.0), muscle, out=muscle)
        muscle *= np.float32(12.0)
        np.clip(muscle, 0.0, 1.0, out=muscle)
        # t = t (1 - muscle) + (0.56 + 0.05 medium) muscle
        medium *= np.float32(0.05)
        medium += np.float32(0.56)
        medium -= t
        medium *= muscle
        t += medium
        del muscle
    del medium

    if lesion is not None:
        row, col = lesion.center
        if laterality is Laterality.RIGHT:
            col = cols - 1 - col  # lesion centres are given in the hung (final) image
        patch, half = _lesion_patch(lesion, seed)
        r0, r1 = max(row - half, 0), min(row + half + 1, rows)
        c0, c1 = max(col - half, 0), min(col + half + 1, cols)
        if r0 < r1 and c0 < c1:
            sub = patch[r0 - (row - half):r1 - (row - half), c0 - (col - half):c1 - (col - half)]
            t[r0:r1, c0:c1] += np.float32(lesion.contrast) * sub

    np.random.default_rng([seed, 19]).standard_normal(dtype=np.float32, out=scratch)
    scratch *= np.float32(0.008)  # quantum noise
    t += scratch
    del scratch
    max_value = (1 << bits_stored) - 1
    t *= np.float32(max_value)
    np.rint(t, out=t)
    np.clip(t, 1, max_value, out=t)
    values = t.astype(np.uint16)
    del t
    values[mask == 0] = 0
    if laterality is Laterality.RIGHT:
        values = np.ascontiguousarray(values[:, ::-1])
    return values
