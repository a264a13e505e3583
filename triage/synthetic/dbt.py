"""Synthetic digital breast tomosynthesis (DBT): Breast Tomosynthesis Image Storage objects.

One enhanced multi-frame object per view (PS3.3 A.84, SOP Class 1.2.840.10008.5.1.4.1.1.13.1.3):
Patient, General Study, Patient Study, General Series, Enhanced Mammography Series, Frame of
Reference, General Equipment, Enhanced General Equipment, Image Pixel, Multi-frame Functional
Groups, Multi-frame Dimension, Acquisition Context, X-Ray 3D Image, Breast Tomosynthesis
Acquisition, X-Ray 3D Reconstruction, Breast View and SOP Common modules. Functional groups:
Pixel Measures, Plane Orientation (Patient), Frame Anatomy (with Frame Laterality), X-Ray 3D
Frame Type and Frame VOI LUT shared; Frame Content and Plane Position (Patient) per frame.
``dciodvfy`` reports no errors on them (``tests/integration/test_synthetic_dbt_dciodvfy.py``).

Content: the 2D phantom of :mod:`triage.synthetic.phantom` for the same breast (same view
seed as the 2D views of the exam, so FFDM, synthetic 2D and DBT show one breast) at the DBT
pixel spacing, plus a texture that changes slowly from slice to slice, plus an optional
ellipsoidal mass that is in focus on one slice and fades over a few neighbours. The outline
is the same on every slice and the background is exactly 0 (MONOCHROME2).

Geometry: slices are planes parallel to the detector, ``slice_spacing_mm`` apart (1 mm thin
slices by default). Slice ``k`` (0-based, in anatomical order) lies at
``origin + k * spacing * normal`` where ``normal`` = row direction x column direction of
Image Orientation (Patient), so sorting frames by their position along the normal gives back
``k``. Rows and columns follow the 2D hanging convention (Patient Orientation A\\R for a left
CC, P\\L for a right CC, A\\FR / P\\FL for MLO).

Slabs (``slab_thickness_mm``): a second series whose frames are the average of
``thickness / spacing`` consecutive thin slices, one every half thickness (50 % overlap). Each
slab object says so four ways: Image Type / Frame Type value 4 ``MEAN`` (thin slices have
``NONE``), Pixel Measures Slice Thickness = the slab thickness, Spacing Between Slices = the
step, and Series Description / Reconstruction Description "... mm slabs".

Determinism: pixels and UIDs depend on the seed only (plus the study date/time for dates).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path

import cv2
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag
from pydicom.uid import BreastTomosynthesisImageStorage

from triage.errors import ConfigError, StorageError
from triage.synthetic.builders import (
    ExamSummary,
    InstanceSummary,
    _code_item,
    _da,
    _file_meta,
    _patient_and_study,
    _pixel_spacing,
    _tm,
    _tz_offset,
    bits_for_max,
    build_view,
    encode,
    view_specs,
)
from triage.synthetic.phantom import breast_geometry, breast_mask, render_breast
from triage.synthetic.specs import (
    ExamSpec,
    Lesion,
    LesionShape,
    StudyIdentity,
    TransferSyntax,
    seeded_uid,
)
from triage.synthetic.vendors import Vendor, vendor_profile
from triage.synthetic.views import BREAST_CODE, MammoView, patient_orientation, view_code
from triage.vocabulary import Laterality

logger = logging.getLogger(__name__)

#: Default number of thin slices (the paper's DBT images have 70 on average; tests use 8).
DEFAULT_SLICES = 40
#: Thin-slice spacing of the reconstructions (mm).
THIN_SLICE_MM = 1.0
#: Series numbers inside a study: FFDM 1, synthetic 2D 2, DBT 3, DBT slabs 4.
DBT_SERIES_NUMBER = 3
SLAB_SERIES_NUMBER = 4
FFDM_SERIES_NUMBER = 1
SYNTHETIC2D_SERIES_NUMBER = 2


@dataclass(frozen=True)
class DbtProfile:
    """Reconstruction parameters of a vendor's DBT (plausible values, not a device's)."""

    pixel_spacing_mm: float
    bits_stored: int
    algorithm: str  # Algorithm Type (0018,9527)
    scan_arc_deg: float
    projections: int


DBT_PROFILES: dict[Vendor, DbtProfile] = {
    Vendor.HOLOGIC: DbtProfile(0.1, 10, "FILTER_BACK_PROJ", 15.0, 15),
    Vendor.SIEMENS: DbtProfile(0.085, 12, "FILTER_BACK_PROJ", 50.0, 25),
    Vendor.GE: DbtProfile(0.1, 12, "ITERATIVE", 25.0, 9),
}


def dbt_matrix(vendor: Vendor, scale: float = 1.0, small_format: bool = False) -> tuple[int, int]:
    """(rows, columns) of a DBT slice: the FFDM detector area at the DBT pixel spacing."""
    profile = vendor_profile(vendor)
    rows, cols = profile.small_matrix if small_format else profile.large_matrix
    factor = profile.pixel_spacing_mm / DBT_PROFILES[Vendor(vendor)].pixel_spacing_mm * scale
    return max(32, round(rows * factor)), max(32, round(cols * factor))


@dataclass(frozen=True)
class DbtLesion:
    """A mass in a DBT view: ``lesion.center`` is (row, col) in the stored frame pixels.

    ``center_slice`` is the 0-based thin slice (anatomical order) where it is in focus; it is
    visible, fainter and smaller, on ``half_extent`` slices on either side.
    """

    lesion: Lesion
    center_slice: int
    half_extent: int = 2

    def weight(self, position: float) -> float:
        """Relative cross-section (0..1) at thin-slice ``position`` (may be fractional)."""
        offset = abs(position - self.center_slice) / (self.half_extent + 1)
        return max(0.0, 1.0 - offset * offset)


@dataclass(frozen=True)
class DbtViewSpec:
    """One Breast Tomosynthesis object (one view). ``slices`` counts thin slices.

    With ``slab_thickness_mm`` the object holds slabs computed from those thin slices
    instead. ``reversed_storage`` stores the frames from the last slice to the first (the
    positions still tell the order). Laterality is in the Frame Anatomy functional group
    (Frame Laterality), where the IOD puts it; ``image_laterality=True`` also writes Image
    Laterality at the top level as some vendors do (``dciodvfy`` then warns that the SOP
    Class is standard extended, no error).
    """

    study: StudyIdentity
    laterality: Laterality
    view: MammoView = MammoView.CC
    vendor: Vendor = Vendor.HOLOGIC
    seed: int = 0
    matrix: tuple[int, int] = (256, 208)
    pixel_spacing_mm: float = 0.1
    slices: int = DEFAULT_SLICES
    slice_spacing_mm: float = THIN_SLICE_MM
    slab_thickness_mm: float | None = None
    lesion: DbtLesion | None = None
    reversed_storage: bool = False
    image_laterality: bool = False
    series_number: int = DBT_SERIES_NUMBER
    instance_number: int = 1
    series_uid: str | None = None
    sop_uid: str | None = None
    acquisition_datetime: datetime | None = None
    series_description: str = ""
    #: thin slices (slices, rows, columns), unsigned, MONOCHROME2 meaning, in anatomical
    #: order: replaces the phantom (``matrix`` and ``slices`` are taken from its shape)
    pixels: np.ndarray | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.pixels is not None:
            if self.pixels.ndim != 3 or self.pixels.dtype.kind != "u":
                raise ConfigError(
                    f"pixels must be a 3D unsigned integer array (slices, rows, columns), got "
                    f"{self.pixels.dtype} with shape {self.pixels.shape}")
            depth, rows, cols = self.pixels.shape
            object.__setattr__(self, "matrix", (int(rows), int(cols)))
            object.__setattr__(self, "slices", int(depth))
        if not 1 <= self.slices <= 400:
            raise ConfigError(f"slices {self.slices} must be 1-400")
        if min(self.matrix) < 32:
            raise ConfigError(f"matrix {self.matrix} is too small: use at least 32x32 pixels")
        if not self.slice_spacing_mm > 0 or not self.pixel_spacing_mm > 0:
            raise ConfigError("slice and pixel spacing must be positive")
        if self.slab_thickness_mm is not None and not (
            self.slice_spacing_mm < self.slab_thickness_mm <= self.slices * self.slice_spacing_mm
        ):
            raise ConfigError(
                f"slab thickness {self.slab_thickness_mm} mm must exceed the slice spacing "
                f"({self.slice_spacing_mm} mm) and fit in the {self.slices} slices"
            )

    @property
    def is_slab(self) -> bool:
        return self.slab_thickness_mm is not None

    def slab_layout(self) -> tuple[int, int, int]:
        """(thin slices per slab, step in thin slices, number of slabs)."""
        if self.slab_thickness_mm is None:
            raise ConfigError("slab_layout() needs a slab thickness; this view has thin slices")
        per_slab = max(2, round(self.slab_thickness_mm / self.slice_spacing_mm))
        step = max(1, per_slab // 2)
        return per_slab, step, (self.slices - per_slab) // step + 1

    @property
    def number_of_frames(self) -> int:
        return self.slab_layout()[2] if self.is_slab else self.slices

    def frame_centres(self) -> list[float]:
        """Centre of each frame in thin-slice units (anatomical order)."""
        if not self.is_slab:
            return [float(k) for k in range(self.slices)]
        per_slab, step, count = self.slab_layout()
        return [j * step + (per_slab - 1) / 2 for j in range(count)]


# ---------------------------------------------------------------------------- geometry
_DIRECTIONS = {
    "L": (1.0, 0.0, 0.0), "R": (-1.0, 0.0, 0.0),
    "P": (0.0, 1.0, 0.0), "A": (0.0, -1.0, 0.0),
    "H": (0.0, 0.0, 1.0), "F": (0.0, 0.0, -1.0),
}


def _direction(letters: str) -> np.ndarray:
    vector = np.sum([np.asarray(_DIRECTIONS[c]) for c in letters], axis=0)
    return np.asarray(vector / np.linalg.norm(vector), dtype=np.float64)


def image_orientation(laterality: Laterality, view: MammoView) -> tuple[np.ndarray, np.ndarray]:
    """Unit row and column direction cosines consistent with Patient Orientation."""
    row, column = patient_orientation(laterality, view)
    return _direction(row), _direction(column)


def _ds(value: float) -> str:
    """A DS value of at most 16 characters."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


# ---------------------------------------------------------------------------- pixels
def _smooth_field(rng: np.random.Generator, rows: int, cols: int, cell: float) -> np.ndarray:
    """Zero-mean, unit-variance noise with structures about ``cell`` pixels wide."""
    cell = max(cell, 2.0)
    small = rng.standard_normal((math.ceil(rows / cell) + 3, math.ceil(cols / cell) + 3),
                                dtype=np.float32)
    blurred: np.ndarray = cv2.GaussianBlur(small, (0, 0), 0.8)
    blurred -= np.float32(blurred.mean())
    blurred /= np.float32(max(float(blurred.std()), 1e-6))
    size = (round(small.shape[1] * cell), round(small.shape[0] * cell))
    big: np.ndarray = cv2.resize(blurred, size, interpolation=cv2.INTER_CUBIC)
    return np.ascontiguousarray(big[:rows, :cols], dtype=np.float32)


class _SliceRenderer:
    """Thin slices of one view, one at a time (a pure function of the spec)."""

    def __init__(self, spec: DbtViewSpec, bits_stored: int) -> None:
        rows, cols = spec.matrix
        self.spec = spec
        self.max_value = (1 << bits_stored) - 1
        if spec.pixels is not None:
            self.base = np.asarray(spec.pixels[spec.slices // 2], dtype=np.float32)
            return
        base = render_breast(rows, cols, spec.laterality, spec.view, spec.seed, bits_stored,
                             spec.pixel_spacing_mm)
        geometry = breast_geometry(rows, cols, spec.view, spec.seed)
        mask = breast_mask(geometry)
        if spec.laterality is Laterality.RIGHT:
            mask = np.ascontiguousarray(mask[:, ::-1])
        self.inside = mask > 0
        self.base = base.astype(np.float32)
        rng = np.random.default_rng([spec.seed, 41])
        size = max(rows, cols)
        weight = np.float32(0.03 * self.max_value)
        self.field_a = _smooth_field(rng, rows, cols, size / 60) * weight
        self.field_b = _smooth_field(rng, rows, cols, size / 60) * weight
        self.phase = float(rng.uniform(0, 2 * np.pi))
        self.period = float(rng.uniform(10.0, 16.0))  # slices per texture cycle

    def _lesion(self, out: np.ndarray, position: float) -> None:
        lesion = self.spec.lesion
        if lesion is None:
            return
        weight = lesion.weight(position)
        if weight <= 0:
            return
        radius = max(lesion.lesion.radius_px * math.sqrt(weight), 1.5)
        row, col = lesion.lesion.center
        half = math.ceil(radius * 1.5)
        rows, cols = out.shape
        r0, r1 = max(row - half, 0), min(row + half + 1, rows)
        c0, c1 = max(col - half, 0), min(col + half + 1, cols)
        if r0 >= r1 or c0 >= c1:
            return
        yy, xx = np.mgrid[r0:r1, c0:c1].astype(np.float32)
        dist = np.hypot(yy - np.float32(row), xx - np.float32(col)) / np.float32(radius)
        profile = np.sqrt(np.clip(1.0 - dist * dist, 0.0, 1.0))
        out[r0:r1, c0:c1] += np.float32(lesion.lesion.contrast * self.max_value * weight) * profile

    def thin_slice(self, k: int) -> np.ndarray:
        """Thin slice ``k`` as float32 (not yet rounded/clipped)."""
        if self.spec.pixels is not None:
            return np.array(self.spec.pixels[k], dtype=np.float32)
        angle = self.phase + 2 * np.pi * k / self.period
        out = self.base + np.float32(math.cos(angle)) * self.field_a
        out += np.float32(math.sin(angle)) * self.field_b
        self._lesion(out, float(k))
        return out

    def frame(self, centre: float) -> np.ndarray:
        """The stored values (uint16) of the frame centred on thin slice ``centre``."""
        if not self.spec.is_slab:
            out = self.thin_slice(round(centre))
        else:
            per_slab, _, _ = self.spec.slab_layout()
            first = round(centre - (per_slab - 1) / 2)
            out = self.thin_slice(first)
            for k in range(first + 1, first + per_slab):
                out += self.thin_slice(k)
            out /= np.float32(per_slab)
        np.rint(out, out=out)
        if self.spec.pixels is not None:
            return out.astype(np.uint16)
        np.clip(out, 1, self.max_value, out=out)
        values = out.astype(np.uint16)
        values[~self.inside] = 0
        return values


# ---------------------------------------------------------------------------- dataset
def dbt_sop_uid(spec: DbtViewSpec) -> str:
    if spec.sop_uid:
        return spec.sop_uid
    return seeded_uid("dbt-sop", spec.study.study_uid, spec.series_number, spec.instance_number,
                      spec.laterality, spec.view, spec.seed, spec.slices,
                      spec.slab_thickness_mm or "", int(spec.reversed_storage))


def dbt_series_uid(spec: DbtViewSpec) -> str:
    return spec.series_uid or seeded_uid("series", spec.study.study_uid, spec.series_number)


def _sequence(*items: Dataset) -> DicomSequence:
    return DicomSequence(list(items))


def _item(**attributes: object) -> Dataset:
    item = Dataset()
    for keyword, value in attributes.items():
        setattr(item, keyword, value)
    return item


def build_dbt_view(spec: DbtViewSpec) -> Dataset:
    """One DBT view as a Breast Tomosynthesis Image (native pixels, Explicit VR LE)."""
    vendor = vendor_profile(spec.vendor)
    profile = DBT_PROFILES[Vendor(spec.vendor)]
    study = spec.study
    rows, cols = spec.matrix
    bits = profile.bits_stored if spec.pixels is None else bits_for_max(int(spec.pixels.max()))
    acquired = spec.acquisition_datetime or study.study_datetime
    slab = spec.slab_thickness_mm
    centres = spec.frame_centres()
    frames = len(centres)
    order = list(range(frames))[::-1] if spec.reversed_storage else list(range(frames))
    row_dir, col_dir = image_orientation(spec.laterality, spec.view)
    normal = np.cross(row_dir, col_dir)
    origin = -20.0 * normal  # slice 0 lies 20 mm from the patient origin (arbitrary)
    frame_thickness = slab if slab is not None else spec.slice_spacing_mm
    frame_step = (spec.slab_layout()[1] * spec.slice_spacing_mm if slab is not None
                  else spec.slice_spacing_mm)

    ds = Dataset()
    _patient_and_study(ds, study)
    ds.SOPClassUID = BreastTomosynthesisImageStorage
    ds.SOPInstanceUID = dbt_sop_uid(spec)
    ds.InstanceCreationDate = _da(acquired)
    ds.InstanceCreationTime = _tm(acquired)

    # General Series + Enhanced Mammography Series
    ds.Modality = "MG"
    ds.SeriesInstanceUID = dbt_series_uid(spec)
    ds.SeriesNumber = spec.series_number
    ds.SeriesDate = _da(study.study_datetime)
    ds.SeriesTime = _tm(study.study_datetime)
    ds.SeriesDescription = spec.series_description or (
        f"Tomosynthesis {_ds(slab)} mm slabs" if slab is not None
        else f"Tomosynthesis {_ds(spec.slice_spacing_mm)} mm slices")
    ds.BodyPartExamined = "BREAST"

    # Frame of Reference
    ds.FrameOfReferenceUID = seeded_uid("dbt-for", study.study_uid, spec.laterality, spec.view,
                                        spec.seed)
    ds.PositionReferenceIndicator = ""

    # General Equipment + Enhanced General Equipment
    ds.Manufacturer = vendor.manufacturer
    ds.InstitutionName = study.institution_name
    ds.StationName = vendor.station_name
    ds.InstitutionAddress = "1 Synthetic Street, Nowhere"
    ds.OperatorsName = "SYNTHETIC^TECHNOLOGIST"
    ds.ManufacturerModelName = vendor.model_name
    ds.DeviceSerialNumber = f"SYN{vendor.vendor.upper()}0001"
    ds.SoftwareVersions = vendor.software_versions

    # Multi-frame Functional Groups (top level)
    ds.InstanceNumber = spec.instance_number
    ds.ContentDate = _da(acquired)
    ds.ContentTime = _tm(acquired)
    ds.NumberOfFrames = frames

    # X-Ray 3D Image
    # value 4: NONE for reconstructed slices, MEAN for slabs averaged from thin slices
    image_type = ["DERIVED", "PRIMARY", "TOMOSYNTHESIS", "MEAN" if slab is not None else "NONE"]
    ds.ImageType = image_type
    ds.PixelPresentation = "MONOCHROME"
    ds.VolumetricProperties = "VOLUME"
    ds.VolumeBasedCalculationTechnique = "NONE"
    ds.ContentQualification = "PRODUCT"
    ds.BurnedInAnnotation = "NO"
    ds.RecognizableVisualFeatures = "NO"
    ds.LossyImageCompression = "00"
    ds.PresentationLUTShape = "IDENTITY"

    # Image Pixel
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated = 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0

    # Breast View
    if spec.image_laterality:
        ds.ImageLaterality = str(spec.laterality)
    view_item = _code_item(view_code(spec.view))
    view_item.ViewModifierCodeSequence = DicomSequence([])
    ds.ViewCodeSequence = _sequence(view_item)
    ds.BreastImplantPresent = "NO"
    ds.PartialView = "NO"

    # Acquisition Context
    ds.AcquisitionContextSequence = DicomSequence([])

    # Multi-frame Dimension: frames are indexed by stack and position in the stack
    dimension_uid = seeded_uid("dbt-dim", ds.SOPInstanceUID)
    ds.DimensionOrganizationSequence = _sequence(_item(DimensionOrganizationUID=dimension_uid))
    ds.DimensionOrganizationType = "3D"
    ds.DimensionIndexSequence = _sequence(
        _item(DimensionOrganizationUID=dimension_uid,
              DimensionIndexPointer=Tag("StackID"),
              FunctionalGroupPointer=Tag("FrameContentSequence"),
              DimensionDescriptionLabel="Stack ID"),
        _item(DimensionOrganizationUID=dimension_uid,
              DimensionIndexPointer=Tag("InStackPositionNumber"),
              FunctionalGroupPointer=Tag("FrameContentSequence"),
              DimensionDescriptionLabel="In-Stack Position Number"),
    )

    # Shared functional groups
    renderer = _SliceRenderer(spec, bits)
    sample = renderer.base[::4, ::4]
    tissue = sample[sample > 0]
    low, high = (np.percentile(tissue, [1, 99]) if tissue.size else (0, (1 << bits) - 1))
    shared = Dataset()
    shared.PixelMeasuresSequence = _sequence(_item(
        PixelSpacing=[_ds(spec.pixel_spacing_mm), _ds(spec.pixel_spacing_mm)],
        SliceThickness=_ds(frame_thickness),
        SpacingBetweenSlices=_ds(frame_step)))
    shared.PlaneOrientationSequence = _sequence(_item(
        ImageOrientationPatient=[_ds(v) for v in (*row_dir, *col_dir)]))
    anatomy = _item(FrameLaterality=str(spec.laterality))
    anatomy.AnatomicRegionSequence = _sequence(_code_item(BREAST_CODE))
    shared.FrameAnatomySequence = _sequence(anatomy)
    shared.PixelValueTransformationSequence = _sequence(_item(
        RescaleIntercept="0", RescaleSlope="1", RescaleType="US"))
    shared.FrameVOILUTSequence = _sequence(_item(
        WindowCenter=_ds(round((low + high) / 2)), WindowWidth=_ds(max(round(high - low), 2)),
        VOILUTFunction=vendor.voi_lut_function))
    ds.SharedFunctionalGroupsSequence = _sequence(shared)

    # Per-frame functional groups, in storage order
    acquired_dt = acquired.strftime("%Y%m%d%H%M%S") + _tz_offset(acquired)
    per_frame: list[Dataset] = []
    pixels = np.empty((frames, rows, cols), dtype=np.uint16)
    for stored, index in enumerate(order):
        position = origin + normal * (centres[index] * spec.slice_spacing_mm)
        group = Dataset()
        group.FrameContentSequence = _sequence(_item(
            FrameAcquisitionDateTime=acquired_dt,
            FrameReferenceDateTime=acquired_dt,
            FrameAcquisitionDuration=5000.0,
            StackID="1", InStackPositionNumber=index + 1,
            DimensionIndexValues=[1, index + 1]))
        group.PlanePositionSequence = _sequence(_item(
            ImagePositionPatient=[_ds(v) for v in position]))
        group.XRay3DFrameTypeSequence = _sequence(_item(
            FrameType=image_type,
            PixelPresentation="MONOCHROME", VolumetricProperties="VOLUME",
            VolumeBasedCalculationTechnique="NONE", ReconstructionIndex=1))
        per_frame.append(group)
        pixels[stored] = renderer.frame(centres[index])
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)

    # X-Ray 3D Reconstruction
    ds.XRay3DReconstructionSequence = _sequence(_item(
        ReconstructionDescription=(f"{_ds(slab)} mm slabs from {_ds(spec.slice_spacing_mm)} mm "
                                   "slices" if slab is not None else "thin slices"),
        ApplicationName="SYNTHETIC DBT", ApplicationVersion="1",
        ApplicationManufacturer="triage synthetic", AlgorithmType=profile.algorithm,
        AlgorithmDescription="synthetic phantom, no real reconstruction",
        AcquisitionIndex=[1]))

    # Breast Tomosynthesis Acquisition: one acquisition, ``projections`` exposures
    rng = np.random.default_rng([spec.seed, 23])
    thickness = float(np.round(rng.uniform(35, 70)))
    source_to_detector = vendor.source_to_detector_mm
    source_to_patient = round(source_to_detector / 1.08, 2)
    exposure_mas = float(np.round(rng.uniform(30, 120)))
    exposure_ms = float(np.round(rng.uniform(1000, 4000)))
    projection_items = []
    for number in range(profile.projections):
        angle = -profile.scan_arc_deg / 2 + profile.scan_arc_deg * number / max(
            profile.projections - 1, 1)
        projection_items.append(_item(
            PositionerPrimaryAngle=round(angle, 3), PositionerSecondaryAngle=0.0,
            ExposureInmAs=round(exposure_mas / profile.projections, 3),
            ExposureTimeInms=round(exposure_ms / profile.projections, 2),
            RelativeXRayExposure=int(rng.integers(200, 900))))
    acquisition = _item(
        FieldOfViewShape="RECTANGLE",
        FieldOfViewOrigin=[0.0, 0.0],
        FieldOfViewDimensionsInFloat=[rows * spec.pixel_spacing_mm, cols * spec.pixel_spacing_mm],
        XRayReceptorType="DIGITAL_DETECTOR",
        DistanceSourceToDetector=source_to_detector,
        DistanceSourceToPatient=source_to_patient,
        EstimatedRadiographicMagnificationFactor=round(source_to_detector / source_to_patient, 6),
        ExposureControlMode="AUTOMATIC",
        ExposureControlModeDescription="automatic exposure control",
        HalfValueLayer=round(float(rng.uniform(0.45, 0.6)), 3),
        FocalSpots=[0.3],
        DetectorTemperature=30.0,
        FilterType="FLAT",
        PaddleDescription="18x24 STANDARD",
        BodyPartThickness=thickness,
        CompressionForce=float(np.round(rng.uniform(60, 140))),
        KVP=vendor.kvp + 2.0,
        XRayTubeCurrentInmA=round(exposure_mas / exposure_ms * 1000, 2),
        ExposureTimeInms=exposure_ms,
        ExposureInmAs=exposure_mas,
        AnodeTargetMaterial=vendor.anode,
        FilterMaterial=["ALUMINUM"],
        PrimaryPositionerScanArc=profile.scan_arc_deg)
    acquisition.PerProjectionAcquisitionSequence = DicomSequence(projection_items)
    acquisition.OrganDose = round(float(rng.uniform(1.0, 2.5)), 2)
    acquisition.EntranceDoseInmGy = round(float(rng.uniform(3.0, 9.0)), 2)
    ds.XRay3DAcquisitionSequence = _sequence(acquisition)

    # Breast Tomosynthesis Contributing Sources: the projections, on the FFDM detector
    calibrated = acquired - timedelta(days=30)
    detector_factor = spec.pixel_spacing_mm / vendor.pixel_spacing_mm
    ds.ContributingSourcesSequence = _sequence(_item(
        Manufacturer=vendor.manufacturer, ManufacturerModelName=vendor.model_name,
        DeviceSerialNumber=ds.DeviceSerialNumber, SoftwareVersions=vendor.software_versions,
        StationName=vendor.station_name, AcquisitionDateTime=acquired_dt,
        Rows=round(rows * detector_factor), Columns=round(cols * detector_factor),
        BitsStored=vendor.bits_stored, LossyImageCompression="00",
        DetectorID=f"SYNDET{vendor.vendor.upper()}", DetectorType=vendor.detector_type,
        DetectorElementSpacing=[_ds(vendor.pixel_spacing_mm), _ds(vendor.pixel_spacing_mm)],
        DateOfLastDetectorCalibration=_da(calibrated),
        TimeOfLastDetectorCalibration=_tm(calibrated)))

    ds.PixelData = pixels.tobytes()
    del pixels
    _file_meta(ds)
    logger.debug("built synthetic DBT view", extra={
        "study_instance_uid": study.study_uid, "sop_uid": ds.SOPInstanceUID, "frames": frames,
        "laterality": str(spec.laterality), "view": str(spec.view)})
    return ds


# ---------------------------------------------------------------------------- exams
def dbt_view_specs(spec: ExamSpec, *, slices: int = DEFAULT_SLICES,
                   slab_thickness_mm: float | None = None,
                   series_number: int = DBT_SERIES_NUMBER) -> list[DbtViewSpec]:
    """The DBT views of an exam (slabs instead of thin slices with ``slab_thickness_mm``).

    Breast shape, view seeds and the lesion's side and in-plane position come from the same
    rules as the 2D views of ``spec`` (:func:`triage.synthetic.builders.view_specs` at the DBT
    matrix), so every modality of a combo exam shows the same breast and mass.
    """
    study = spec.identity()
    matrix = spec.matrix or dbt_matrix(spec.vendor, spec.scale, spec.small_format)
    spacing = DBT_PROFILES[Vendor(spec.vendor)].pixel_spacing_mm
    if spec.matrix is not None:
        detector_rows = dbt_matrix(spec.vendor, 1.0, spec.small_format)[0]
        spacing = round(spacing * detector_rows / matrix[0], 8)
    elif spec.scale != 1.0:
        spacing = round(spacing / spec.scale, 8)
    planar = view_specs(replace(spec, study=study, matrix=matrix))
    rng = np.random.default_rng([spec.seed, 43])
    centre_slice = int(rng.integers(slices // 4, max(slices // 4 + 1, (3 * slices) // 4)))
    specs: list[DbtViewSpec] = []
    for index, view_spec in enumerate(planar):
        lesion = None
        if view_spec.lesion is not None:
            radius_mm = view_spec.lesion.radius_px * _pixel_spacing(view_spec)
            contrast = max(view_spec.lesion.contrast, 0.45)  # DBT separates it from tissue
            lesion = DbtLesion(  # drawn as an ellipsoid: round in every slice
                lesion=replace(view_spec.lesion, radius_px=radius_mm / spacing,
                               contrast=contrast, shape=LesionShape.ROUND),
                center_slice=min(centre_slice, slices - 1),
                half_extent=int(np.clip(round(radius_mm / 3), 1, 3)))
        specs.append(DbtViewSpec(
            study=study, laterality=view_spec.laterality, view=view_spec.view,
            vendor=spec.vendor, seed=view_spec.seed, matrix=matrix, pixel_spacing_mm=spacing,
            slices=slices, slab_thickness_mm=slab_thickness_mm, lesion=lesion,
            series_number=series_number, instance_number=index + 1,
            acquisition_datetime=(view_spec.acquisition_datetime or study.study_datetime)
            + timedelta(seconds=10)))
    return specs


def iter_dbt_exam(spec: ExamSpec, *, slices: int = DEFAULT_SLICES,
                  slab_thickness_mm: float | None = None) -> Iterator[tuple[Dataset, DbtViewSpec]]:
    """Thin-slice DBT views, then (with ``slab_thickness_mm``) a slab series, one at a time."""
    if spec.study is None:
        spec = replace(spec, study=spec.identity())
    for view_spec in dbt_view_specs(spec, slices=slices):
        yield build_dbt_view(view_spec), view_spec
    if slab_thickness_mm is not None:
        for view_spec in dbt_view_specs(spec, slices=slices, slab_thickness_mm=slab_thickness_mm,
                                        series_number=SLAB_SERIES_NUMBER):
            yield build_dbt_view(view_spec), view_spec


def _write(ds: Dataset, path: Path, transfer_syntax: TransferSyntax | str) -> None:
    encode(ds, transfer_syntax)
    try:
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
    except OSError as exc:
        raise StorageError(f"cannot write {path}: {exc.strerror}") from exc


def _filename(ds: Dataset, laterality: Laterality, view: MammoView, suffix: str) -> str:
    return (f"{int(ds.SeriesNumber):03d}_{int(ds.InstanceNumber):04d}_"
            f"{laterality}-{view}_{suffix}.dcm")


def generate_dbt_exam(spec: ExamSpec, out_dir: Path,
                      transfer_syntax: TransferSyntax | str = TransferSyntax.EXPLICIT, *,
                      slices: int = DEFAULT_SLICES, slab_thickness_mm: float | None = None,
                      combo: bool = False) -> ExamSummary:
    """Write a synthetic DBT exam (one object per view), or with ``combo`` the whole visit:
    the four FFDM views (series 1), a synthetic 2D set (series 2) and the DBT views
    (series 3; slabs in series 4), all in one study. Objects are written as they are built,
    so at most one DBT volume is in memory."""
    if spec.study is None:
        spec = replace(spec, study=spec.identity())  # one study time for every object
    study = spec.identity()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot create output directory {out_dir}: {exc.strerror}") from exc
    instances: list[InstanceSummary] = []
    if combo:
        for planar in (replace(spec, series_number=FFDM_SERIES_NUMBER, generated_2d=False),
                       replace(spec, series_number=SYNTHETIC2D_SERIES_NUMBER, generated_2d=True)):
            suffix = "synthetic2d" if planar.generated_2d else "ffdm"
            for planar_spec in view_specs(planar):
                ds = build_view(planar_spec)
                path = out_dir / _filename(ds, planar_spec.laterality, planar_spec.view, suffix)
                _write(ds, path, transfer_syntax)
                instances.append(InstanceSummary(
                    path=path, sop_instance_uid=str(ds.SOPInstanceUID),
                    laterality=str(planar_spec.laterality), view=str(planar_spec.view),
                    rows=int(ds.Rows), columns=int(ds.Columns), lesion=planar_spec.lesion))
    for ds, view_spec in iter_dbt_exam(spec, slices=slices, slab_thickness_mm=slab_thickness_mm):
        slab = view_spec.slab_thickness_mm
        suffix = "dbt" if slab is None else f"dbt-slab{_ds(slab)}"
        path = out_dir / _filename(ds, view_spec.laterality, view_spec.view, suffix)
        _write(ds, path, transfer_syntax)
        instances.append(InstanceSummary(
            path=path, sop_instance_uid=str(ds.SOPInstanceUID),
            laterality=str(view_spec.laterality), view=str(view_spec.view),
            rows=int(ds.Rows), columns=int(ds.Columns),
            lesion=None if view_spec.lesion is None else view_spec.lesion.lesion,
            frames=int(ds.NumberOfFrames),
            lesion_slice=None if view_spec.lesion is None else view_spec.lesion.center_slice,
            slab_thickness_mm=view_spec.slab_thickness_mm))
        del ds
    return ExamSummary(
        study_instance_uid=study.study_uid, accession_number=study.accession_number,
        patient_id=study.patient_id, vendor=str(spec.vendor),
        transfer_syntax=str(TransferSyntax(transfer_syntax)), instances=instances)
