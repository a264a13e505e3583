"""DICOM builders: synthetic mammograms, a CT image, and writing them to files.

The mammograms follow the Digital Mammography X-Ray Image IOD (PS3.3 A.27): Patient,
General Study, General Series, DX Series, General Equipment, General Image, Image Pixel,
DX Anatomy Imaged, DX Image, DX Detector, Mammography Image, VOI LUT, Acquisition
Context and SOP Common modules, plus a few optional acquisition attributes in the
named vendor's style. ``dciodvfy`` reports no errors on them (see the integration test).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.coding import Code
from pydicom.uid import (
    CTImageStorage,
    DigitalMammographyXRayImageStorageForPresentation,
    DigitalMammographyXRayImageStorageForProcessing,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
)
from pydicom.valuerep import PersonName

from triage.errors import ConfigError, StorageError
from triage.synthetic.phantom import breast_geometry, lesion_position, render_breast
from triage.synthetic.specs import (
    ExamSpec,
    Lesion,
    StudyIdentity,
    TransferSyntax,
    ViewSpec,
    seeded_uid,
)
from triage.synthetic.vendors import Photometric, vendor_profile
from triage.synthetic.views import (
    BREAST_CODE,
    PARTIAL_VIEW_CODE,
    MammoView,
    ViewModifier,
    modifier_code,
    patient_orientation,
    view_code,
)
from triage.vocabulary import Laterality

logger = logging.getLogger(__name__)

_TRANSFER_SYNTAX_UIDS = {
    TransferSyntax.EXPLICIT: ExplicitVRLittleEndian,
    TransferSyntax.JPEG2000: JPEG2000Lossless,
}


@dataclass(frozen=True)
class InstanceSummary:
    path: Path
    sop_instance_uid: str
    laterality: str
    view: str
    rows: int
    columns: int
    lesion: Lesion | None = None
    frames: int = 1  # DBT: number of frames (slices or slabs)
    lesion_slice: int | None = None  # DBT: 0-based thin slice where the lesion is in focus
    slab_thickness_mm: float | None = None  # DBT slab series


@dataclass(frozen=True)
class ExamSummary:
    """What ``generate_exam`` wrote: one entry per file, plus the shared identifiers."""

    study_instance_uid: str
    accession_number: str
    patient_id: str
    vendor: str
    transfer_syntax: str
    instances: list[InstanceSummary] = field(default_factory=list)

    @property
    def files(self) -> list[Path]:
        return [i.path for i in self.instances]

    def as_dict(self) -> dict[str, object]:
        return {
            "study_instance_uid": self.study_instance_uid,
            "accession_number": self.accession_number,
            "patient_id": self.patient_id,
            "vendor": self.vendor,
            "transfer_syntax": self.transfer_syntax,
            "instances": [
                {
                    "file": str(i.path),
                    "sop_instance_uid": i.sop_instance_uid,
                    "laterality": i.laterality,
                    "view": i.view,
                    "rows": i.rows,
                    "columns": i.columns,
                    "lesion": None if i.lesion is None else {
                        "center_row": i.lesion.center[0],
                        "center_col": i.lesion.center[1],
                        "radius_px": round(i.lesion.radius_px, 1),
                        "shape": str(i.lesion.shape),
                    },
                    **({} if i.frames == 1 else {
                        "frames": i.frames,
                        "lesion_slice": i.lesion_slice,
                        "slab_thickness_mm": i.slab_thickness_mm,
                    }),
                }
                for i in self.instances
            ],
        }


# ---------------------------------------------------------------------------- helpers
def _code_item(code: Code | tuple[str, str, str]) -> Dataset:
    item = Dataset()
    if isinstance(code, Code):
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = (
            code.value, code.scheme_designator, code.meaning)
    else:
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code
    return item


def _da(value: datetime) -> str:
    return value.strftime("%Y%m%d")


def _tm(value: datetime) -> str:
    return value.strftime("%H%M%S")


def _tz_offset(value: datetime) -> str:
    offset = value.utcoffset() or timedelta(0)
    minutes = int(offset.total_seconds() // 60)
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}{abs(minutes) % 60:02d}"


def _matrix(spec: ViewSpec) -> tuple[int, int]:
    if spec.pixels is not None:
        rows, cols = spec.pixels.shape
        return int(rows), int(cols)
    if spec.matrix is not None:
        return spec.matrix
    profile = vendor_profile(spec.vendor)
    rows, cols = profile.small_matrix if spec.small_format else profile.large_matrix
    return max(32, round(rows * spec.scale)), max(32, round(cols * spec.scale))


def _pixel_spacing(spec: ViewSpec) -> float:
    """The given spacing, else the vendor's scaled so the detector keeps its size."""
    if spec.pixel_spacing_mm is not None:
        return spec.pixel_spacing_mm
    profile = vendor_profile(spec.vendor)
    if spec.matrix is not None and spec.pixels is None:
        detector_rows = (profile.small_matrix if spec.small_format else profile.large_matrix)[0]
        return round(profile.pixel_spacing_mm * detector_rows / spec.matrix[0], 8)
    return round(profile.pixel_spacing_mm / spec.scale, 8)


def _bits_stored(spec: ViewSpec) -> int:
    if spec.bits_stored is not None:
        return spec.bits_stored
    if spec.pixels is not None:
        return bits_for_max(int(spec.pixels.max()))
    return vendor_profile(spec.vendor).bits_stored


def bits_for_max(max_value: int) -> int:
    """Bits Stored for pixel data whose largest value is ``max_value`` (12 at least)."""
    return max(12, int(max_value).bit_length())


def _patient_and_study(ds: Dataset, study: StudyIdentity) -> None:
    ds.SpecificCharacterSet = (
        list(study.character_set) if len(study.character_set) > 1 else study.character_set[0]
    )
    # Patient
    ds.PatientName = PersonName(study.patient_name)
    ds.PatientID = study.patient_id
    ds.IssuerOfPatientID = study.issuer_of_patient_id
    ds.PatientBirthDate = (
        study.patient_birth_date.strftime("%Y%m%d") if study.patient_birth_date else "")
    ds.PatientSex = study.patient_sex
    # General Study
    ds.StudyInstanceUID = study.study_uid
    ds.StudyDate = _da(study.study_datetime)
    ds.StudyTime = _tm(study.study_datetime)
    ds.TimezoneOffsetFromUTC = _tz_offset(study.study_datetime)
    ds.ReferringPhysicianName = study.referring_physician_name
    ds.StudyID = study.study_id
    ds.AccessionNumber = study.accession_number
    ds.StudyDescription = study.study_description
    if study.procedure_code is not None:
        ds.ProcedureCodeSequence = DicomSequence([_code_item(study.procedure_code)])
    # Patient Study
    if study.patient_birth_date is not None:
        born = study.patient_birth_date
        when = study.study_datetime.date()
        years = when.year - born.year - ((when.month, when.day) < (born.month, born.day))
        ds.PatientAge = f"{max(years, 0):03d}Y"


def _file_meta(ds: Dataset) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta


# ---------------------------------------------------------------------------- mammograms
def view_sop_uid(spec: ViewSpec) -> str:
    """The SOP Instance UID of a view: given, or derived from what makes it unique."""
    if spec.sop_uid:
        return spec.sop_uid
    acquired = spec.acquisition_datetime.isoformat() if spec.acquisition_datetime else ""
    return seeded_uid("sop", spec.study.study_uid, spec.series_number, spec.instance_number,
                      spec.laterality, spec.view, spec.seed, acquired)


def view_series_uid(spec: ViewSpec) -> str:
    return spec.series_uid or seeded_uid("series", spec.study.study_uid, spec.series_number)


def build_view(spec: ViewSpec) -> Dataset:
    """One mammogram as a pydicom Dataset (pixel data native, Explicit VR Little Endian)."""
    profile = vendor_profile(spec.vendor)
    study = spec.study
    rows, cols = _matrix(spec)
    spacing = _pixel_spacing(spec)
    bits = _bits_stored(spec)
    max_value = (1 << bits) - 1
    photometric = spec.photometric or profile.photometric
    acquired = spec.acquisition_datetime or study.study_datetime

    if spec.pixels is not None:
        values = np.ascontiguousarray(spec.pixels, dtype=np.uint16)
        if int(values.max()) > max_value:
            raise ConfigError(
                f"pixel values up to {int(values.max())} do not fit in {bits} bits stored")
    else:
        values = render_breast(rows, cols, spec.laterality, spec.view, spec.seed, bits,
                               spacing, spec.lesion)
    stored = (max_value - values).astype(np.uint16) if photometric is Photometric.MONOCHROME1 \
        else values

    ds = Dataset()
    _patient_and_study(ds, study)
    sop_class = (DigitalMammographyXRayImageStorageForProcessing if spec.for_processing
                 else DigitalMammographyXRayImageStorageForPresentation)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = view_sop_uid(spec)
    ds.InstanceCreationDate = _da(acquired)
    ds.InstanceCreationTime = _tm(acquired)

    # General Series + DX Series
    ds.Modality = "MG"
    ds.SeriesInstanceUID = view_series_uid(spec)
    ds.SeriesNumber = spec.series_number
    ds.SeriesDate = _da(study.study_datetime)
    ds.SeriesTime = _tm(study.study_datetime)
    ds.SeriesDescription = spec.series_description or (
        "Synthetic 2D" if spec.generated_2d else "Screening mammography")
    ds.BodyPartExamined = "BREAST"
    ds.PresentationIntentType = "FOR PROCESSING" if spec.for_processing else "FOR PRESENTATION"

    # General Equipment
    ds.Manufacturer = profile.manufacturer
    ds.InstitutionName = study.institution_name
    ds.OperatorsName = "SYNTHETIC^TECHNOLOGIST"
    ds.StationName = profile.station_name
    ds.ManufacturerModelName = profile.model_name
    ds.DeviceSerialNumber = f"SYN{profile.vendor.upper()}0001"
    ds.SoftwareVersions = profile.software_versions

    # General Image
    ds.InstanceNumber = spec.instance_number
    ds.PatientOrientation = list(patient_orientation(spec.laterality, spec.view))
    ds.ContentDate = _da(acquired)
    ds.ContentTime = _tm(acquired)
    ds.AcquisitionDate = _da(acquired)
    ds.AcquisitionTime = _tm(acquired)
    ds.AcquisitionDateTime = acquired.strftime("%Y%m%d%H%M%S") + _tz_offset(acquired)
    if spec.generated_2d:
        # value 3 is empty for DX-family images; value 4 marks a 2D image generated
        # from a tomosynthesis acquisition
        ds.ImageType = ["DERIVED", "PRIMARY", "", "GENERATED_2D"]
    else:
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.BurnedInAnnotation = "NO"
    ds.QualityControlImage = "YES" if spec.quality_control else "NO"
    ds.LossyImageCompression = "00"

    # Image Pixel + DX Image
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = str(photometric)
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated = 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.PixelIntensityRelationship = "LOG"
    # -1: higher values mean less X-ray reached the detector (dense tissue bright)
    ds.PixelIntensityRelationshipSign = -1 if photometric is Photometric.MONOCHROME2 else 1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.PresentationLUTShape = "INVERSE" if photometric is Photometric.MONOCHROME1 else "IDENTITY"
    if not spec.for_processing:
        # VOI LUT: a window over the tissue range
        sample = values[::4, ::4]  # a window estimate needs no full-resolution sort
        tissue = sample[sample > 0]
        low, high = (np.percentile(tissue, [1, 99]) if tissue.size else (0, max_value))
        ds.WindowCenter = round((low + high) / 2)
        ds.WindowWidth = max(round(high - low), 2)
        if photometric is Photometric.MONOCHROME1:
            ds.WindowCenter = max_value - int(ds.WindowCenter)
        ds.VOILUTFunction = profile.voi_lut_function
        ds.WindowCenterWidthExplanation = "SYNTHETIC"

    # DX Anatomy Imaged + Mammography Image
    ds.ImageLaterality = str(spec.laterality)
    ds.AnatomicRegionSequence = DicomSequence([_code_item(BREAST_CODE)])
    ds.OrganExposed = "BREAST"
    ds.PositionerType = "MAMMOGRAPHIC"
    ds.ViewPosition = str(spec.view)
    if spec.include_view_code:
        item = _code_item(view_code(spec.view))
        item.ViewModifierCodeSequence = DicomSequence(
            [_code_item(modifier_code(m)) for m in spec.modifiers])
        ds.ViewCodeSequence = DicomSequence([item])
    implant = spec.implant_present or ViewModifier.IMPLANT_DISPLACED in spec.modifiers
    ds.BreastImplantPresent = "YES" if implant else "NO"
    ds.PartialView = "YES" if spec.partial_view else "NO"
    if spec.partial_view:
        ds.PartialViewDescription = "Breast extends beyond the detector"
        ds.PartialViewCodeSequence = DicomSequence([_code_item(PARTIAL_VIEW_CODE)])

    # DX Detector
    ds.DetectorType = profile.detector_type
    ds.DetectorConfiguration = "AREA"
    ds.DetectorID = f"SYNDET{profile.vendor.upper()}"
    ds.ImagerPixelSpacing = [spacing, spacing]
    ds.PixelSpacing = [spacing, spacing]

    # Positioning and exposure, vendor-like values
    mlo_angle = 45.0 if spec.view.family == "MLO" else (90.0 if spec.view.family == "ML" else 0.0)
    ds.PositionerPrimaryAngle = mlo_angle if spec.laterality is Laterality.LEFT else -mlo_angle
    source_to_detector = profile.source_to_detector_mm
    # magnification views lift the breast towards the tube
    source_to_patient = source_to_detector / (
        1.8 if ViewModifier.MAGNIFICATION in spec.modifiers else 1.08)
    ds.DistanceSourceToDetector = round(source_to_detector, 2)
    ds.DistanceSourceToPatient = round(source_to_patient, 2)
    ds.EstimatedRadiographicMagnificationFactor = round(
        source_to_detector / round(source_to_patient, 2), 6)
    rng = np.random.default_rng([spec.seed, 23])
    thickness = float(np.round(rng.uniform(35, 70)))
    ds.BodyPartThickness = thickness
    ds.CompressionForce = float(np.round(rng.uniform(60, 140)))
    ds.KVP = profile.kvp + (1.0 if thickness > 55 else 0.0)
    exposure_uas = int(rng.integers(60_000, 180_000))
    ds.ExposureInuAs = exposure_uas
    ds.Exposure = max(1, round(exposure_uas / 1000))
    ds.ExposureTime = int(rng.integers(600, 1800))
    ds.RelativeXRayExposure = int(rng.integers(200, 900))
    ds.AnodeTargetMaterial = profile.anode
    ds.FilterMaterial = profile.filter_material
    ds.OrganDose = round(float(rng.uniform(0.8, 2.0)), 2)
    ds.EntranceDoseInmGy = round(float(rng.uniform(3.0, 8.0)), 2)

    # Acquisition Context
    ds.AcquisitionContextSequence = DicomSequence([])

    ds.PixelData = stored.tobytes()
    _file_meta(ds)
    logger.debug("built synthetic view", extra={
        "study_instance_uid": study.study_uid, "sop_uid": ds.SOPInstanceUID,
        "laterality": str(spec.laterality), "view": str(spec.view)})
    return ds


def view_specs(spec: ExamSpec) -> list[ViewSpec]:
    """The views of an exam, with their lesion (if any) placed inside the breast.

    A lesion goes into one breast, chosen by the seed, and appears in every view of
    that breast at the same normalised depth from the chest wall.
    """
    study = spec.identity()
    rng = np.random.default_rng([spec.seed, 5])
    lesion_side = Laterality.LEFT if rng.random() < 0.5 else Laterality.RIGHT
    depth, across = float(rng.uniform(0.3, 0.6)), float(rng.uniform(-0.5, 0.5))
    radius_mm = float(rng.uniform(5.0, 9.0))
    base = ViewSpec(study=study, laterality=Laterality.LEFT, vendor=spec.vendor,
                    scale=spec.scale, matrix=spec.matrix, small_format=spec.small_format,
                    photometric=spec.photometric, generated_2d=spec.generated_2d,
                    for_processing=spec.for_processing, series_number=spec.series_number)
    specs: list[ViewSpec] = []
    for index, (laterality, view) in enumerate(spec.views):
        view = MammoView.from_view(view)
        view_seed = int(np.random.SeedSequence([spec.seed, index]).generate_state(1)[0])
        candidate = replace(base, laterality=laterality, view=view, seed=view_seed,
                            instance_number=index + 1,
                            sop_uid=seeded_uid("sop", study.study_uid, spec.series_number,
                                               index + 1, laterality, view, spec.seed),
                            acquisition_datetime=study.study_datetime
                            + timedelta(seconds=45 * (index + 1)))
        lesion = None
        if spec.lesion and laterality is lesion_side:
            rows, cols = _matrix(candidate)
            geometry = breast_geometry(rows, cols, view, view_seed)
            radius_px = radius_mm / _pixel_spacing(candidate)
            row, col = lesion_position(geometry, depth, across, margin_px=2 * radius_px)
            if laterality is Laterality.RIGHT:
                col = cols - 1 - col
            lesion = Lesion(center=(row, col), radius_px=radius_px, shape=spec.lesion_shape)
        specs.append(replace(candidate, lesion=lesion))
    return specs


def build_exam(spec: ExamSpec) -> list[Dataset]:
    """All views of a synthetic screening exam, sharing patient, study and series."""
    return [build_view(v) for v in view_specs(spec)]


# ---------------------------------------------------------------------------- CT
def build_ct_image(study: StudyIdentity, seed: int = 0, series_number: int = 90,
                   instance_number: int = 1, matrix: int = 64) -> Dataset:
    """A minimal, valid CT Image in the same study (something the product must not score)."""
    ds = Dataset()
    _patient_and_study(ds, study)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = seeded_uid("ct-sop", study.study_uid, series_number, instance_number,
                                   seed)
    ds.InstanceCreationDate = _da(study.study_datetime)
    ds.InstanceCreationTime = _tm(study.study_datetime)
    ds.Modality = "CT"
    ds.BodyPartExamined = "CHEST"
    ds.SeriesInstanceUID = seeded_uid("ct-series", study.study_uid, series_number)
    ds.SeriesNumber = series_number
    ds.SeriesDescription = "Synthetic CT"
    ds.FrameOfReferenceUID = seeded_uid("ct-for", study.study_uid, series_number)
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = "SYNTHETIC"
    ds.InstanceNumber = instance_number
    ds.PatientPosition = "HFS"
    ds.ContentDate = _da(study.study_datetime)
    ds.ContentTime = _tm(study.study_datetime)
    ds.AcquisitionNumber = 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.PixelSpacing = [0.7, 0.7]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [0, 0, float(instance_number)]
    ds.SliceThickness = 1.0
    ds.KVP = 120
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = matrix
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    ds.BurnedInAnnotation = "NO"
    rng = np.random.default_rng([seed, 29])
    yy, xx = np.mgrid[:matrix, :matrix]
    body = (yy - matrix / 2) ** 2 + (xx - matrix / 2) ** 2 < (0.4 * matrix) ** 2
    pixels = np.where(body, 1064 + rng.integers(0, 40, (matrix, matrix)), 24)
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    _file_meta(ds)
    return ds


# ---------------------------------------------------------------------------- writing
def encode(ds: Dataset, transfer_syntax: TransferSyntax | str) -> Dataset:
    """``ds`` in the transfer syntax (in place); JPEG 2000 is lossless (pylibjpeg-openjpeg)."""
    target = _TRANSFER_SYNTAX_UIDS[TransferSyntax(transfer_syntax)]
    if ds.file_meta.TransferSyntaxUID == target:
        return ds
    if target == JPEG2000Lossless:
        try:
            ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg", generate_instance_uid=False)
        except (RuntimeError, ValueError) as exc:
            raise ConfigError(
                f"cannot JPEG 2000-encode instance {ds.SOPInstanceUID}: {exc}; check that "
                "pylibjpeg and pylibjpeg-openjpeg are installed"
            ) from exc
    return ds


def instance_filename(ds: Dataset) -> str:
    laterality = str(ds.get("ImageLaterality", "")) or str(ds.get("Laterality", ""))
    view = str(ds.get("ViewPosition", "")) or str(ds.Modality)
    label = f"{laterality}-{view}" if laterality else view
    return f"{int(ds.get('SeriesNumber', 0)):03d}_{int(ds.InstanceNumber):04d}_{label}.dcm"


def write_exam(datasets: Sequence[Dataset], out_dir: Path,
               transfer_syntax: TransferSyntax | str = TransferSyntax.EXPLICIT) -> list[Path]:
    """Write each dataset as a DICOM file (with file meta) under ``out_dir``."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot create output directory {out_dir}: {exc.strerror}") from exc
    paths: list[Path] = []
    for ds in datasets:
        encode(ds, transfer_syntax)
        path = out_dir / instance_filename(ds)
        try:
            pydicom.dcmwrite(path, ds, enforce_file_format=True)
        except OSError as exc:
            raise StorageError(f"cannot write {path}: {exc.strerror}") from exc
        paths.append(path)
    return paths


def generate_exam(spec: ExamSpec, out_dir: Path,
                  transfer_syntax: TransferSyntax | str = TransferSyntax.EXPLICIT
                  ) -> ExamSummary:
    """Build a synthetic exam and write it; the summary names files, UIDs and lesions."""
    if spec.study is None:
        spec = replace(spec, study=spec.identity())  # one study time for every view
    specs = view_specs(spec)
    datasets = [build_view(v) for v in specs]
    paths = write_exam(datasets, out_dir, transfer_syntax)
    study = specs[0].study
    return ExamSummary(
        study_instance_uid=study.study_uid,
        accession_number=study.accession_number,
        patient_id=study.patient_id,
        vendor=str(spec.vendor),
        transfer_syntax=str(TransferSyntax(transfer_syntax)),
        instances=[
            InstanceSummary(path=p, sop_instance_uid=str(d.SOPInstanceUID),
                            laterality=str(v.laterality), view=str(v.view),
                            rows=int(d.Rows), columns=int(d.Columns), lesion=v.lesion)
            for p, d, v in zip(paths, datasets, specs, strict=True)
        ],
    )

