"""Specifications of synthetic exams: plain frozen dataclasses, validated on creation."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum

import numpy as np
from pydicom.uid import generate_uid

from triage.errors import ConfigError
from triage.synthetic.vendors import Photometric, Vendor
from triage.synthetic.views import MammoView, ViewModifier
from triage.vocabulary import Laterality

#: The four screening views in the order an exam is usually acquired.
STANDARD_VIEWS: tuple[tuple[Laterality, MammoView], ...] = (
    (Laterality.RIGHT, MammoView.CC),
    (Laterality.LEFT, MammoView.CC),
    (Laterality.RIGHT, MammoView.MLO),
    (Laterality.LEFT, MammoView.MLO),
)

#: Screening mammography procedure (LOINC 24606-6).
SCREENING_PROCEDURE: tuple[str, str, str] = ("24606-6", "LN", "MG Breast screening")
SCREENING_DESCRIPTION = "MG screening bilateral"

_ENTROPY_TAG = "triage.synthetic"


class TransferSyntax(StrEnum):
    EXPLICIT = "explicit"  # Explicit VR Little Endian
    JPEG2000 = "jpeg2000"  # JPEG 2000 Image Compression (Lossless Only)


class ExamModality(StrEnum):
    """What ``triage synthetic exam --modality`` writes."""

    FFDM = "ffdm"
    SYNTHETIC2D = "synthetic2d"  # MG marked as generated 2D
    DBT = "dbt"  # Breast Tomosynthesis Image objects, one per view
    COMBO = "combo"  # FFDM + synthetic 2D + DBT of the same breasts, one study


class LesionShape(StrEnum):
    ROUND = "round"
    SPICULATED = "spiculated"


def seeded_uid(*parts: object) -> str:
    """A UID under pydicom's root derived from ``parts`` (same parts, same UID).

    Synthetic objects never use the product's own UID root, so they are never mistaken
    for objects the product made itself.
    """
    return str(generate_uid(entropy_srcs=[_ENTROPY_TAG, *(str(p) for p in parts)]))


def now_local() -> datetime:
    """The current local time, timezone-aware, to the second."""
    return datetime.now().astimezone().replace(microsecond=0)


@dataclass(frozen=True)
class StudyIdentity:
    """What every instance of one study shares: patient, accession and study attributes."""

    study_uid: str
    accession_number: str
    patient_id: str
    patient_name: str
    study_datetime: datetime  # timezone-aware; its offset is written as Timezone Offset
    issuer_of_patient_id: str = "TRIAGE-SYNTHETIC"
    patient_birth_date: date | None = None
    patient_sex: str = "F"
    study_id: str = "1"
    study_description: str = SCREENING_DESCRIPTION
    procedure_code: tuple[str, str, str] | None = SCREENING_PROCEDURE
    #: Specific Character Set values, e.g. ("ISO_IR 100",) or ("", "ISO 2022 IR 87").
    character_set: tuple[str, ...] = ("ISO_IR 100",)
    institution_name: str = "Synthetic Breast Centre"
    referring_physician_name: str = ""

    def __post_init__(self) -> None:
        if self.study_datetime.tzinfo is None:
            raise ConfigError(
                "StudyIdentity.study_datetime must be timezone-aware (e.g. "
                "datetime.now().astimezone()) so its UTC offset can be recorded"
            )
        if len(self.accession_number) > 16 or len(self.patient_id) > 64:
            raise ConfigError("accession number is at most 16 and patient ID 64 characters")


def study_identity_for_seed(seed: int, study_datetime: datetime | None = None) -> StudyIdentity:
    """The synthetic patient and study of ``seed``; UIDs and IDs depend on the seed only."""
    when = study_datetime or now_local()
    if when.tzinfo is None:
        when = when.astimezone()
    rng = np.random.default_rng([seed, 7])
    age_years = int(rng.integers(40, 75))
    birth = date(when.year - age_years, int(rng.integers(1, 13)), int(rng.integers(1, 29)))
    return StudyIdentity(
        study_uid=seeded_uid("study", seed),
        accession_number=f"SYN{seed % 10**12:012d}",
        patient_id=f"SYNPAT{seed % 10**10:010d}",
        patient_name=f"SYNTHETIC^PATIENT {seed}",
        study_datetime=when,
        patient_birth_date=birth,
        study_id=str(seed % 10**16),
    )


@dataclass(frozen=True)
class Lesion:
    """A mass drawn into one view; ``center`` is (row, column) in that view's pixels."""

    center: tuple[int, int]
    radius_px: float
    shape: LesionShape = LesionShape.SPICULATED
    contrast: float = 0.3  # added brightness as a fraction of the stored range


@dataclass(frozen=True)
class ViewSpec:
    """One mammogram. Every option the ingest rules look at is a field here.

    ``pixels`` (rows x columns, unsigned integers, MONOCHROME2 meaning: dense tissue
    bright) replaces the drawn phantom, e.g. to wrap real PNG images.
    """

    study: StudyIdentity
    laterality: Laterality
    view: MammoView = MammoView.CC
    vendor: Vendor = Vendor.HOLOGIC
    seed: int = 0
    scale: float = 1.0
    matrix: tuple[int, int] | None = None  # (rows, columns); default: the vendor's
    small_format: bool = False
    photometric: Photometric | None = None  # default: the vendor's
    bits_stored: int | None = None  # default: the vendor's (or from ``pixels``)
    pixel_spacing_mm: float | None = None  # default: the vendor's, divided by scale
    modifiers: tuple[ViewModifier, ...] = ()
    include_view_code: bool = True  # False: View Position only (non-conformant input)
    for_processing: bool = False
    implant_present: bool = False
    partial_view: bool = False
    quality_control: bool = False
    generated_2d: bool = False
    acquisition_datetime: datetime | None = None  # default: the study date/time
    lesion: Lesion | None = None
    series_number: int = 1
    instance_number: int = 1
    series_uid: str | None = None  # default: derived from study UID and series number
    sop_uid: str | None = None  # default: derived from the spec
    series_description: str = ""
    pixels: np.ndarray | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 < self.scale <= 4:
            raise ConfigError(f"scale {self.scale} must be in (0, 4]")
        if self.matrix is not None and min(self.matrix) < 32:
            raise ConfigError(f"matrix {self.matrix} is too small: use at least 32x32 pixels")
        if self.bits_stored is not None and not 8 <= self.bits_stored <= 16:
            raise ConfigError(f"bits_stored {self.bits_stored} must be 8-16")
        if self.pixels is not None and (self.pixels.ndim != 2 or self.pixels.dtype.kind != "u"):
            raise ConfigError(
                f"pixels must be a 2D unsigned integer array, got {self.pixels.dtype} "
                f"with shape {self.pixels.shape}"
            )


@dataclass(frozen=True)
class ExamSpec:
    """A screening exam: which views, which vendor, whether a lesion is drawn."""

    seed: int = 0
    vendor: Vendor = Vendor.HOLOGIC
    lesion: bool = False
    lesion_shape: LesionShape = LesionShape.SPICULATED
    scale: float = 1.0
    matrix: tuple[int, int] | None = None
    small_format: bool = False
    photometric: Photometric | None = None
    generated_2d: bool = False
    for_processing: bool = False
    study_datetime: datetime | None = None  # default: now (used when ``study`` is None)
    study: StudyIdentity | None = None  # default: derived from the seed
    views: tuple[tuple[Laterality, MammoView], ...] = STANDARD_VIEWS
    series_number: int = 1

    def __post_init__(self) -> None:
        if not 0 < self.scale <= 4:
            raise ConfigError(f"scale {self.scale} must be in (0, 4]")
        if not self.views:
            raise ConfigError("an exam needs at least one view")

    def identity(self) -> StudyIdentity:
        return self.study or study_identity_for_seed(self.seed, self.study_datetime)
