"""Tomosynthesis (DBT) volumes: slice order, laterality/view, slabs, and the 3D-GMIC input.

Reading the header (:func:`read_volume_frames`)
-----------------------------------------------
* **Slice order**: by the position of each frame along the slice normal, i.e.
  ``dot(Image Position (Patient), row x column)`` with the direction cosines of Image
  Orientation (Patient), both read from the frame's Plane Position / Plane Orientation
  (Patient) functional groups (per-frame first, then shared, then the top level). Slices are
  sorted by increasing position (ties keep the stored order). When positions are missing or
  all equal, In-Stack Position Number (Frame Content) is used; failing that, the stored
  order. ``order[k]`` is the stored 0-based frame of slice ``k``: every slice index the
  model reports maps back to a frame with it.
* **Slice spacing**: the median step between sorted positions, else Spacing Between Slices.
* **Laterality**: Image Laterality, then Laterality (the ingest classifier's order), then
  Frame Laterality of the Frame Anatomy functional group (shared, then per-frame), which is
  where the Breast Tomosynthesis IOD puts it.
* **View**: View Code Sequence (SCT 399162004 / SRT R-10242 cranio-caudal, SCT 399368009 /
  SRT R-10226 medio-lateral oblique, or those code meanings), then View Position, then a
  View Code Sequence inside the shared or first per-frame functional groups.
* **Slab or thin slices** (heuristics, the first that applies gives ``slab_reason``):
  1. Slab Thickness (0018,9104) or Slice Thickness (Pixel Measures / top level) above
     :data:`SLAB_MIN_THICKNESS_MM` — reconstructed slices are 0.5-1 mm, slabs 5-10 mm;
  2. Image Type / Frame Type value 4 naming a combination of slices (MAXIMUM, MINIMUM,
     MEAN, ADDITION) or Volume Based Calculation Technique MAX_IP / MIN_IP / VOLUME_RENDER /
     SURFACE_RENDER;
  3. a vendor marker: the word "slab" in Series Description, Derivation Description,
     Image Comments or a Reconstruction Description;
  4. slices more than :data:`SLAB_MIN_THICKNESS_MM` apart (slab series step by half a slab).

Preparing the model input (:func:`prepare_volume`)
---------------------------------------------------
Park et al. (3D-GMIC, section V-D.3): "We crop each image to a predefined input size using
the procedure described by Wu et al. ... synthetic 2D images and DBT images are cropped to the
size of 2116x1339 pixels." A DBT *image* is the whole volume, and the model compares windows
"at the same xy-location" across slices (section III-B.2, Algorithm 1), so every slice must
be cut with the same window. Hence:

* **One set of decisions per volume.** Crop window, flip and optimal centre come from the
  2D reference preprocessing (:func:`triage.imaging.prepare.prepare_view`) run once on a
  representative image and are then applied to every slice. The paper does not say which
  image; we use the **maximum-intensity projection** over slices by default. The reference
  cropping and centring only look at pixels > 0, and the MIP's foreground is the union of
  every slice's foreground, so the window is the one that keeps the breast of every slice
  (maximum intensity projection is also how the paper's related work, section II, sums up
  all slices of a DBT image in one 2D image). It costs one extra decode of every frame (the
  frames are decoded one at a time, twice). ``reference="central"`` uses the central slice
  instead (one extra decode); it can cut off tissue that only other slices show.
* **Standardisation over the whole volume** (``standardization="volume"``, default):
  ``(x - mean) / max(std, 1e-5)`` with the mean and population standard deviation of all
  slices together, padding included. Evidence: the shared 3D-GMIC fixture input (produced by
  the reference DBT preprocessing) has mean 0 and std 1 over the volume while its slices
  have means of +-0.04 and stds of 0.93-1.05, and the background takes one value on every
  slice. Statistics are accumulated slice by slice in float64 (the reference computes them
  in float32 on the whole array; values agree to ~1e-6). ``standardization="slice"``
  standardises each slice on its own, as the 2D pipeline does per image.
* **Memory**: the output (D, H, W) float32 array is allocated once and each decoded frame is
  copied straight into its window (zero padding elsewhere), so the peak stays near one
  float32 volume plus a few slices — provided the stored pixel data is not held whole as
  well: pass the header and ``pixels_from`` (the open file) and each frame's bytes are read
  from the file when it is decoded. (Stored frames are often larger than the model window:
  a 3584x2816 16-bit DBT holds 1.8 times the bytes of its 2116x1339 float32 volume.)

Everything is in the stored pixel frame of the object; :class:`~triage.results.InputFrame`
maps a slice-plane input pixel to the stored frame ``frame_indices[k]`` of slice ``k``.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from triage.errors import PreprocessingError
from triage.imaging.decode import DecodedPixels, decode_pixels
from triage.imaging.orientation import Orientation
from triage.imaging.prepare import prepare_view
from triage.imaging.windowing import STD_FLOOR, Padding, Window
from triage.results import InputFrame
from triage.vocabulary import Laterality, View

logger = logging.getLogger(__name__)

#: Published 3D-GMIC slice size (rows, columns).
DBT_INPUT_SIZE = (2116, 1339)
#: Thicker frames (or a larger slice step) than this are slabs, not reconstructed slices.
SLAB_MIN_THICKNESS_MM = 2.0

_COMBINING_FRAME_TYPES = frozenset({"MAXIMUM", "MINIMUM", "MEAN", "ADDITION"})
_PROJECTING_TECHNIQUES = frozenset({"MAX_IP", "MIN_IP", "VOLUME_RENDER", "SURFACE_RENDER"})
_SLAB_WORD = re.compile(r"\bslabs?\b", re.IGNORECASE)
_VIEW_CODES: dict[tuple[str, str], View] = {
    ("SCT", "399162004"): View.CC,
    ("SRT", "R-10242"): View.CC,
    ("SCT", "399368009"): View.MLO,
    ("SRT", "R-10226"): View.MLO,
}
_VIEW_MEANINGS: dict[str, View] = {
    "cranio-caudal": View.CC,
    "craniocaudal": View.CC,
    "medio-lateral oblique": View.MLO,
    "mediolateral oblique": View.MLO,
}
_AXIS_LETTERS = (("L", "R"), ("P", "A"), ("H", "F"))  # DICOM LPS: + then - direction

Reference = Literal["mip", "central"]
Standardization = Literal["volume", "slice"]


# ---------------------------------------------------------------------------- header
@dataclass(frozen=True)
class VolumeInfo:
    """What the header of one DBT object says about its slices (see the module docstring)."""

    sop_instance_uid: str
    series_instance_uid: str
    number_of_frames: int
    rows: int
    columns: int
    order: tuple[int, ...]  # stored 0-based frame of each slice, in slice order
    order_source: str  # "plane_position", "in_stack_position" or "stored"
    positions_mm: tuple[float, ...] | None  # along the normal, in slice order
    slice_spacing_mm: float | None
    slice_thickness_mm: float | None
    pixel_spacing_mm: tuple[float, float] | None
    row_direction: tuple[float, float, float] | None
    column_direction: tuple[float, float, float] | None
    laterality: Laterality | None
    laterality_source: str | None
    view: View | None
    view_source: str | None
    is_slab: bool
    slab_reason: str | None
    patient_orientation: tuple[str, ...] | None  # as stated, or derived from the cosines
    patient_orientation_source: str | None  # "PatientOrientation" or "ImageOrientationPatient"

    @property
    def depth(self) -> int:
        return len(self.order)

    def stored_frame(self, slice_index: int) -> int:
        """The stored 0-based frame of slice ``slice_index``."""
        return self.order[slice_index]


def _items(ds: Dataset | None, keyword: str) -> list[Dataset]:
    if ds is None:
        return []
    value = ds.get(keyword)
    return list(value) if value else []


def _first(ds: Dataset | None, keyword: str) -> Dataset | None:
    items = _items(ds, keyword)
    return items[0] if items else None


def _text(ds: Dataset | None, keyword: str) -> str:
    if ds is None:
        return ""
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v).strip() for v in value)
    return str(value).strip()


def _floats(value: Any, count: int) -> tuple[float, ...] | None:
    if value is None:
        return None
    values = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    if len(values) != count:
        return None
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        return None
    return out if all(math.isfinite(v) for v in out) else None


def _uid(ds: Dataset) -> str:
    return str(ds.get("SOPInstanceUID", "") or "<no SOP Instance UID>")


def number_of_frames(ds: Dataset) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def _groups(ds: Dataset, frame: int) -> list[Dataset]:
    """Functional group items that apply to ``frame``: per-frame first, then shared."""
    groups: list[Dataset] = []
    per_frame = _items(ds, "PerFrameFunctionalGroupsSequence")
    if frame < len(per_frame):
        groups.append(per_frame[frame])
    shared = _first(ds, "SharedFunctionalGroupsSequence")
    if shared is not None:
        groups.append(shared)
    return groups


def frame_attribute(ds: Dataset, frame: int, sequence: str, keyword: str) -> Any:
    """``keyword`` of ``frame`` from the functional group ``sequence`` (per-frame, then
    shared), else from the top level; ``None`` when absent."""
    for group in _groups(ds, frame):
        item = _first(group, sequence)
        if item is not None and item.get(keyword) is not None:
            return item.get(keyword)
    return ds.get(keyword)


def _orientation(ds: Dataset, frame: int) -> tuple[np.ndarray, np.ndarray] | None:
    values = _floats(frame_attribute(ds, frame, "PlaneOrientationSequence",
                                     "ImageOrientationPatient"), 6)
    if values is None:
        return None
    row, column = np.asarray(values[:3]), np.asarray(values[3:])
    if np.linalg.norm(row) < 1e-6 or np.linalg.norm(column) < 1e-6:
        return None
    return row / np.linalg.norm(row), column / np.linalg.norm(column)


def orientation_letters(direction: Sequence[float] | np.ndarray, threshold: float = 1e-3) -> str:
    """Patient direction letters of a direction cosine vector, most significant first."""
    vector = np.asarray(direction, dtype=np.float64)
    letters = []
    for axis in np.argsort(-np.abs(vector), kind="stable"):
        if abs(vector[axis]) > threshold:
            positive, negative = _AXIS_LETTERS[int(axis)]
            letters.append(positive if vector[axis] > 0 else negative)
    return "".join(letters)


def _slice_order(ds: Dataset, frames: int, normal: np.ndarray | None, uid: str
                 ) -> tuple[tuple[int, ...], str, tuple[float, ...] | None]:
    if normal is not None:
        positions = [
            _floats(frame_attribute(ds, i, "PlanePositionSequence", "ImagePositionPatient"), 3)
            for i in range(frames)
        ]
        if all(p is not None for p in positions):
            along = np.array([float(np.dot(p, normal)) for p in positions if p is not None])
            if frames == 1 or float(np.ptp(along)) > 1e-6:
                order = tuple(int(i) for i in np.argsort(along, kind="stable"))
                return order, "plane_position", tuple(float(along[i]) for i in order)
    stack = [frame_attribute(ds, i, "FrameContentSequence", "InStackPositionNumber")
             for i in range(frames)]
    if all(s is not None for s in stack):
        numbers = np.array([int(s) for s in stack])
        if len(set(numbers.tolist())) == frames:
            order = tuple(int(i) for i in np.argsort(numbers, kind="stable"))
            return order, "in_stack_position", None
    if frames > 1:
        logger.warning("no usable frame positions: slices taken in stored order",
                       extra={"sop_instance_uid": uid})
    return tuple(range(frames)), "stored", None


def _read_laterality(ds: Dataset, frames: int) -> tuple[Laterality | None, str | None]:
    candidates: list[tuple[str, str]] = [
        (_text(ds, "ImageLaterality"), "ImageLaterality"),
        (_text(ds, "Laterality"), "Laterality"),
    ]
    shared = _first(ds, "SharedFunctionalGroupsSequence")
    candidates.append((_text(_first(shared, "FrameAnatomySequence"), "FrameLaterality"),
                       "FrameLaterality (shared functional groups)"))
    per_frame = _items(ds, "PerFrameFunctionalGroupsSequence")
    frame_values = {_text(_first(g, "FrameAnatomySequence"), "FrameLaterality").upper()
                    for g in per_frame[:frames]} - {""}
    if len(frame_values) == 1:
        candidates.append((frame_values.pop(), "FrameLaterality (per-frame functional groups)"))
    found = [(v.upper(), source) for v, source in candidates if v.upper() in ("L", "R")]
    if not found:
        return None, None
    if len({v for v, _ in found}) > 1:
        logger.warning("laterality attributes disagree, using %s", found[0][1],
                       extra={"sop_instance_uid": _uid(ds), "values": found})
    return Laterality(found[0][0]), found[0][1]


def _view_from_codes(items: Iterable[Dataset]) -> View | None:
    for item in items:
        scheme = _text(item, "CodingSchemeDesignator").upper()
        scheme = {"SNM3": "SRT", "99SDM": "SRT", "SNOMED": "SCT"}.get(scheme, scheme)
        view = _VIEW_CODES.get((scheme, _text(item, "CodeValue")))
        if view is None:
            view = _VIEW_MEANINGS.get(" ".join(_text(item, "CodeMeaning").lower().split()))
        if view is not None:
            return view
    return None


def _nested_view_codes(group: Dataset | None) -> list[Dataset]:
    """View Code Sequence items in a functional group item or one macro below it."""
    if group is None:
        return []
    found = _items(group, "ViewCodeSequence")
    for element in group:
        if element.VR == "SQ" and element.value:
            for item in element.value:
                found += _items(item, "ViewCodeSequence")
    return found


def _read_view(ds: Dataset) -> tuple[View | None, str | None]:
    view = _view_from_codes(_items(ds, "ViewCodeSequence"))
    if view is not None:
        return view, "ViewCodeSequence"
    position = _text(ds, "ViewPosition").upper()
    if position in ("CC", "MLO"):
        return View(position), "ViewPosition"
    shared = _first(ds, "SharedFunctionalGroupsSequence")
    view = _view_from_codes(_nested_view_codes(shared))
    if view is not None:
        return view, "ViewCodeSequence (shared functional groups)"
    per_frame = _first(ds, "PerFrameFunctionalGroupsSequence")
    view = _view_from_codes(_nested_view_codes(per_frame))
    if view is not None:
        return view, "ViewCodeSequence (per-frame functional groups)"
    return None, None


def _thickness_values(ds: Dataset, keyword: str) -> list[float]:
    """``keyword`` wherever it may sit: top level, and any macro of the shared and first
    per-frame functional groups."""
    values: list[Any] = [ds.get(keyword)]
    for group in (_first(ds, "SharedFunctionalGroupsSequence"),
                  _first(ds, "PerFrameFunctionalGroupsSequence")):
        if group is None:
            continue
        for element in group:
            if element.VR == "SQ" and element.value:
                values += [item.get(keyword) for item in element.value]
    out = []
    for value in values:
        number = _floats(value, 1)
        if number is not None:
            out.append(number[0])
    return out


def _texts(ds: Dataset) -> list[str]:
    texts = [_text(ds, k) for k in ("SeriesDescription", "DerivationDescription",
                                    "ImageComments")]
    texts += [_text(item, "ReconstructionDescription")
              for item in _items(ds, "XRay3DReconstructionSequence")]
    return [t for t in texts if t]


def _frame_types(ds: Dataset) -> list[tuple[list[str], str]]:
    """(values, technique) of Image Type and of the first frame's X-Ray 3D Frame Type."""
    types = [([v.upper() for v in _text(ds, "ImageType").split("\\")],
              _text(ds, "VolumeBasedCalculationTechnique").upper())]
    for group in _groups(ds, 0):
        item = _first(group, "XRay3DFrameTypeSequence")
        if item is not None:
            types.append(([v.upper() for v in _text(item, "FrameType").split("\\")],
                          _text(item, "VolumeBasedCalculationTechnique").upper()))
    return types


def _slab_reason(ds: Dataset, spacing: float | None) -> str | None:
    for keyword in ("SlabThickness", "SliceThickness"):
        thick = [v for v in _thickness_values(ds, keyword) if v > SLAB_MIN_THICKNESS_MM]
        if thick:
            return f"{keyword} {thick[0]:g} mm > {SLAB_MIN_THICKNESS_MM:g} mm"
    for values, technique in _frame_types(ds):
        if len(values) >= 4 and values[3] in _COMBINING_FRAME_TYPES:
            return f"Image/Frame Type value 4 {values[3]} (frames combine several slices)"
        if technique in _PROJECTING_TECHNIQUES:
            return f"Volume Based Calculation Technique {technique}"
    for text in _texts(ds):
        if _SLAB_WORD.search(text):
            return f"description says slab: {text!r}"
    if spacing is not None and spacing > SLAB_MIN_THICKNESS_MM:
        return f"slices {spacing:g} mm apart > {SLAB_MIN_THICKNESS_MM:g} mm"
    return None


def read_volume_frames(ds: Dataset) -> VolumeInfo:
    """Read slice order, geometry, laterality, view and slab status from the header only."""
    uid = _uid(ds)
    frames = number_of_frames(ds)
    cosines = _orientation(ds, 0)
    normal = None if cosines is None else np.cross(cosines[0], cosines[1])
    order, source, positions = _slice_order(ds, frames, normal, uid)

    spacing: float | None = None
    if positions is not None and len(positions) > 1:
        steps = np.diff(np.asarray(positions))
        spacing = float(np.median(steps))
        if float(steps.max()) > 1.5 * float(steps.min()) + 1e-6:
            logger.warning("DBT slices are unevenly spaced (%.3g-%.3g mm)", float(steps.min()),
                           float(steps.max()), extra={"sop_instance_uid": uid})
    if spacing is None:
        stated = _thickness_values(ds, "SpacingBetweenSlices")
        spacing = stated[0] if stated else None
    thickness_values = _thickness_values(ds, "SliceThickness")
    pixel_spacing = frame_attribute(ds, 0, "PixelMeasuresSequence", "PixelSpacing")
    spacing_pair = _floats(pixel_spacing, 2)

    stated_orientation = [v for v in _text(ds, "PatientOrientation").split("\\") if v]
    patient_orientation: tuple[str, ...] | None = None
    orientation_source: str | None = None
    if len(stated_orientation) == 2:
        patient_orientation, orientation_source = tuple(stated_orientation), "PatientOrientation"
    elif cosines is not None:
        patient_orientation = (orientation_letters(cosines[0]), orientation_letters(cosines[1]))
        orientation_source = "ImageOrientationPatient"

    laterality, laterality_source = _read_laterality(ds, frames)
    view, view_source = _read_view(ds)
    reason = _slab_reason(ds, spacing)
    return VolumeInfo(
        sop_instance_uid=uid,
        series_instance_uid=str(ds.get("SeriesInstanceUID", "") or ""),
        number_of_frames=frames,
        rows=int(ds.get("Rows", 0) or 0),
        columns=int(ds.get("Columns", 0) or 0),
        order=order,
        order_source=source,
        positions_mm=positions,
        slice_spacing_mm=spacing,
        slice_thickness_mm=thickness_values[0] if thickness_values else None,
        pixel_spacing_mm=None if spacing_pair is None else (spacing_pair[0], spacing_pair[1]),
        row_direction=None if cosines is None else _triple(cosines[0]),
        column_direction=None if cosines is None else _triple(cosines[1]),
        laterality=laterality,
        laterality_source=laterality_source,
        view=view,
        view_source=view_source,
        is_slab=reason is not None,
        slab_reason=reason,
        patient_orientation=patient_orientation,
        patient_orientation_source=orientation_source,
    )


def _triple(vector: np.ndarray) -> tuple[float, float, float]:
    return float(vector[0]), float(vector[1]), float(vector[2])


def choose_dbt_series(
    candidates: Iterable[VolumeInfo],
) -> dict[tuple[Laterality, View], VolumeInfo]:
    """One DBT object per (laterality, view): thin slices before slabs.

    3D-GMIC was trained on 1 mm reconstructions (Park et al., section V-B.3: "the number of
    slices of a DBT image is equal to the thickness of the corresponding compressed breast in
    millimeters + 6"), so a slab series is used only when no thin-slice object exists.
    Among candidates of the same kind the smaller slice spacing wins, then more frames,
    then the smaller SOP Instance UID (so the choice never depends on arrival order).
    Candidates without a readable laterality or view are left out (logged).
    """
    best: dict[tuple[Laterality, View], VolumeInfo] = {}

    def rank(info: VolumeInfo) -> tuple[bool, float, int, str]:
        spacing = info.slice_spacing_mm if info.slice_spacing_mm is not None else math.inf
        return info.is_slab, spacing, -info.number_of_frames, info.sop_instance_uid

    for info in candidates:
        if info.laterality is None or info.view is None:
            logger.warning("DBT object without readable laterality/view left out",
                           extra={"sop_instance_uid": info.sop_instance_uid})
            continue
        key = (info.laterality, info.view)
        if key not in best or rank(info) < rank(best[key]):
            best[key] = info
    return best


# ---------------------------------------------------------------------------- pixels
@dataclass(frozen=True)
class VolumeSlice:
    """One decoded slice: its index in slice order and its stored frame (0-based)."""

    index: int
    frame: int
    pixels: DecodedPixels


def iter_slices(ds: Dataset, order: VolumeInfo | Sequence[int] | None = None, *,
                pixels_from: BinaryIO | None = None) -> Iterator[VolumeSlice]:
    """Decode the frames of ``ds`` one at a time, in slice order (``order`` = stored frame
    per slice; default: :func:`read_volume_frames`). With ``pixels_from`` (the object's
    file, opened ``rb``) ``ds`` may be the header alone and each frame's bytes are read from
    the file (see :func:`triage.imaging.decode.decode_pixels`)."""
    if order is None:
        order = read_volume_frames(ds)
    frames = order.order if isinstance(order, VolumeInfo) else tuple(int(i) for i in order)
    multi = "NumberOfFrames" in ds
    for index, frame in enumerate(frames):
        yield VolumeSlice(index, frame, decode_pixels(ds, frame=frame if multi else None,
                                                      pixels_from=pixels_from))


@dataclass(frozen=True)
class PreparedVolume:
    """A DBT volume as the 3D-GMIC input, and every decision the preprocessing took.

    ``array`` is float32 (D, H, W) in slice order; slice ``k`` is stored 0-based frame
    ``frame_indices[k]`` (DICOM Referenced Frame Number ``frame_indices[k] + 1``).
    ``frame`` maps a slice-plane input pixel to the stored frame's pixel grid (the same for
    every slice). ``crop_window`` is in source pixels, ``best_center``/``final_window`` in
    the flipped crop, as for 2D views.
    """

    array: np.ndarray
    info: VolumeInfo
    frame: InputFrame
    frame_indices: tuple[int, ...]
    laterality: Laterality
    view: View
    input_size: tuple[int, int]
    reference: Reference
    standardization: Standardization
    crop_window: tuple[int, int, int, int]
    cropped_shape: tuple[int, int]
    best_center: tuple[int, int]
    padding: Padding
    final_window: Window
    flipped: bool
    orientation: Orientation
    mean: float  # subtracted (volume standardisation; NaN with per-slice)
    std: float  # divided by, after the 1e-5 floor (NaN with per-slice)
    lossy: bool
    lossy_reason: str | None

    @property
    def depth(self) -> int:
        return int(self.array.shape[0])


def _reference_image(ds: Dataset, info: VolumeInfo, reference: Reference,
                     pixels_from: BinaryIO | None) -> np.ndarray:
    if reference == "central":
        middle = info.order[info.depth // 2]
        return decode_pixels(ds, frame=middle if "NumberOfFrames" in ds else None,
                             pixels_from=pixels_from).array
    mip: np.ndarray | None = None
    for item in iter_slices(ds, info, pixels_from=pixels_from):
        if mip is None:
            mip = item.pixels.array.copy()
        else:
            np.maximum(mip, item.pixels.array, out=mip)
    if mip is None:
        raise PreprocessingError(f"instance {info.sop_instance_uid}: the volume has no frames")
    return mip


def _placement(frame: InputFrame) -> tuple[slice, slice, slice, slice]:
    """(input rows, input cols, source rows, source cols) of the cropped pixels in the
    window; source columns are ascending, to be mirrored when ``frame.flipped``."""
    height, width = frame.input_shape
    crop_height, crop_width = frame.cropped_shape
    # input row r <- crop row r + window_top - pad_top (same for columns, pad_left = 0)
    row_shift = frame.window_top - frame.pad_top
    col_shift = frame.window_left - frame.pad_left
    r0, r1 = max(0, -row_shift), min(height, crop_height - row_shift)
    c0, c1 = max(0, -col_shift), min(width, crop_width - col_shift)
    if r0 >= r1 or c0 >= c1:
        raise PreprocessingError("the model window does not overlap the breast crop")
    crop_r0, crop_r1 = r0 + row_shift, r1 + row_shift
    crop_c0, crop_c1 = c0 + col_shift, c1 + col_shift
    if frame.flipped:  # flipped-crop column x is unflipped column crop_width - 1 - x
        crop_c0, crop_c1 = crop_width - crop_c1, crop_width - crop_c0
    return (slice(r0, r1), slice(c0, c1),
            slice(frame.crop_top + crop_r0, frame.crop_top + crop_r1),
            slice(frame.crop_left + crop_c0, frame.crop_left + crop_c1))


def _standardize_slices(volume: np.ndarray) -> None:
    for index in range(volume.shape[0]):
        plane = volume[index]
        plane -= plane.mean()
        std = plane.std()
        plane /= std if std > STD_FLOOR else np.float32(STD_FLOOR)


def _standardize_volume(volume: np.ndarray) -> tuple[float, float]:
    """Standardise in place over the whole volume; returns (mean, divisor)."""
    count = float(volume.size)
    mean = sum(float(plane.sum(dtype=np.float64)) for plane in volume) / count
    mean32 = np.float32(mean)
    scratch = np.empty(volume.shape[1:], dtype=np.float32)
    squares = 0.0
    for plane in volume:
        np.subtract(plane, mean32, out=scratch)
        np.multiply(scratch, scratch, out=scratch)
        squares += float(scratch.sum(dtype=np.float64))
    std = math.sqrt(squares / count)
    divisor = np.float32(std if std > STD_FLOOR else STD_FLOOR)
    for plane in volume:
        plane -= mean32
        plane /= divisor
    return float(mean32), float(divisor)


def prepare_volume(
    ds: Dataset,
    input_size: tuple[int, int] = DBT_INPUT_SIZE,
    *,
    info: VolumeInfo | None = None,
    reference: Reference = "mip",
    standardization: Standardization = "volume",
    strict_orientation: bool = False,
    pixels_from: BinaryIO | None = None,
) -> PreparedVolume:
    """Preprocess a DBT object into the 3D-GMIC input (see the module docstring).

    With ``pixels_from`` (the object's file, opened ``rb``) ``ds`` may be the header alone
    (``dcmread(..., stop_before_pixels=True)``): frames are then read from the file one at a
    time and the stored pixel data is never held whole, so the peak stays near the float32
    output volume whatever the size of the stored frames.

    Raises PreprocessingError when laterality or view cannot be read, no breast is found,
    or the orientation cannot be used; DecodeError when a frame cannot be decoded.
    """
    info = info or read_volume_frames(ds)
    uid = info.sop_instance_uid
    if info.laterality is None or info.view is None:
        missing = "laterality" if info.laterality is None else "view"
        raise PreprocessingError(
            f"instance {uid}: DBT {missing} unreadable (no Image Laterality / Frame Laterality "
            "or View Code Sequence); the volume cannot be oriented for the model"
        )
    if reference not in ("mip", "central"):
        raise ValueError(f"reference must be 'mip' or 'central', not {reference!r}")
    if standardization not in ("volume", "slice"):
        raise ValueError(f"standardization must be 'volume' or 'slice', not {standardization!r}")
    height, width = int(input_size[0]), int(input_size[1])

    representative = _reference_image(ds, info, reference, pixels_from)
    decisions = prepare_view(
        representative, info.laterality, info.view, (height, width),
        patient_orientation=info.patient_orientation, strict_orientation=strict_orientation,
        sop_instance_uid=uid,
    )
    del representative
    frame = decisions.frame
    input_rows, input_cols, source_rows, source_cols = _placement(frame)

    volume = np.zeros((info.depth, height, width), dtype=np.float32)
    lossy_reason: str | None = None
    lossy = False
    for item in iter_slices(ds, info, pixels_from=pixels_from):
        pixels = item.pixels.array
        if pixels.shape != frame.source_shape:
            raise PreprocessingError(
                f"instance {uid}: frame {item.frame} has shape {pixels.shape}, expected "
                f"{frame.source_shape}"
            )
        block = pixels[source_rows, source_cols]
        volume[item.index, input_rows, input_cols] = block[:, ::-1] if frame.flipped else block
        lossy = lossy or item.pixels.lossy
        lossy_reason = lossy_reason or item.pixels.lossy_reason
        del pixels, block, item

    if standardization == "volume":
        mean, std = _standardize_volume(volume)
    else:
        _standardize_slices(volume)
        mean = std = math.nan
    logger.debug(
        "prepared DBT volume",
        extra={"sop_instance_uid": uid, "slices": info.depth, "crop_window":
               decisions.crop_window, "best_center": decisions.best_center,
               "reference": reference},
    )
    return PreparedVolume(
        array=volume,
        info=info,
        frame=frame,
        frame_indices=info.order,
        laterality=info.laterality,
        view=info.view,
        input_size=(height, width),
        reference=reference,
        standardization=standardization,
        crop_window=decisions.crop_window,
        cropped_shape=decisions.cropped_shape,
        best_center=decisions.best_center,
        padding=decisions.padding,
        final_window=decisions.final_window,
        flipped=decisions.flipped,
        orientation=decisions.orientation,
        mean=mean,
        std=std,
        lossy=lossy,
        lossy_reason=lossy_reason,
    )
