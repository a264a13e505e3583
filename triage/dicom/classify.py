"""Classify one received instance from its header: image class, view, laterality, scorable.

The rules (DESIGN.md "Image classes" and "DICOM conventions"):

* Image class from the SOP Class: Digital Mammography X-Ray For Presentation is ``ffdm``,
  Breast Tomosynthesis is ``dbt``, Breast Projection X-Ray is ``projection`` (stored, never
  scored). An MG or Breast Projection image whose Image Type says ``GENERATED_2D``, or that a
  vendor rule in :data:`SYNTHETIC_2D_VENDOR_RULES` recognises (Hologic C-View, Siemens Insight
  2D, GE V-Preview, Fujifilm S-View), is ``synthetic2d``. Everything else is ``other``, with
  the reason.
* View from the View Code Sequence first (the codes of DICOM CID 4014 "View for Mammography",
  SNOMED CT and the legacy SNOMED-RT ``SRT`` codes, table :data:`VIEW_CODES`), then from View
  Position; only cranio-caudal and medio-lateral oblique are standard screening views.
* Laterality from Image Laterality, then Laterality, then the Frame Laterality of a
  multi-frame image's shared functional groups.
* Not scorable, with every reason named: View Modifier Code Sequence items (CID 4015,
  :data:`VIEW_MODIFIER_CODES`), non-standard or unreadable views, unreadable laterality,
  Partial View YES, Breast Implant Present YES, Quality Control Image YES, For Processing
  images, projections, other modalities, tomosynthesis archived as secondary capture or CT,
  our own outputs coming back (loopback), studies older than ``TRIAGE_MAX_STUDY_AGE_HOURS``
  and studies outside ``TRIAGE_SCREENING_PROCEDURES``.

Addition to the interface contract: ``classify_instance`` takes an optional keyword ``now``
(aware datetime, default: the current time) used for the study-age rule, so tests and
replays are deterministic.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from fnmatch import fnmatchcase

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID

from triage.config import Settings
from triage.vocabulary import ImageClass, Laterality, View

logger = logging.getLogger(__name__)

# ---- SOP classes ---------------------------------------------------------------------------
MG_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
MG_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.2.1"
BREAST_TOMOSYNTHESIS = "1.2.840.10008.5.1.4.1.1.13.1.3"
BREAST_PROJECTION_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.13.1.4"
BREAST_PROJECTION_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.13.1.5"
DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
DX_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"
COMPUTED_RADIOGRAPHY = "1.2.840.10008.5.1.4.1.1.1"
SECONDARY_CAPTURE_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.7",
        "1.2.840.10008.5.1.4.1.1.7.1",
        "1.2.840.10008.5.1.4.1.1.7.2",
        "1.2.840.10008.5.1.4.1.1.7.3",
        "1.2.840.10008.5.1.4.1.1.7.4",
    }
)
CT_CLASSES = frozenset(
    {"1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.2.2"}
)

#: Image classes a model may score.
SCORABLE_CLASSES = frozenset({ImageClass.FFDM, ImageClass.SYNTHETIC2D, ImageClass.DBT})

#: Transfer syntaxes whose compression may be irreversible. JPEG 2000 (.91/.93) and HTJ2K
#: (.203) allow both; they count as lossy unless Lossy Image Compression says "00".
LOSSY_TRANSFER_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2.4.50",  # JPEG baseline
        "1.2.840.10008.1.2.4.51",  # JPEG extended
        "1.2.840.10008.1.2.4.81",  # JPEG-LS near-lossless
        "1.2.840.10008.1.2.4.91",  # JPEG 2000
        "1.2.840.10008.1.2.4.93",  # JPEG 2000 multi-component
        "1.2.840.10008.1.2.4.203",  # HTJ2K
    }
)

#: The name our outputs carry as Manufacturer (top level and in Contributing Equipment).
OUR_DEVICE_NAME = "triage"


@dataclass(frozen=True)
class ViewCode:
    """One coded view or view modifier: the ACR MQCM abbreviation, its meaning, our view."""

    label: str
    meaning: str
    view: View | None = None


def _both(sct: str, srt: str, code: ViewCode) -> dict[tuple[str, str], ViewCode]:
    return {("SCT", sct): code, ("SRT", srt): code}


#: DICOM CID 4014 "View for Mammography" (SCT code, legacy SRT code) -> view.
VIEW_CODES: dict[tuple[str, str], ViewCode] = {
    **_both("399162004", "R-10242", ViewCode("CC", "cranio-caudal", View.CC)),
    **_both("399368009", "R-10226", ViewCode("MLO", "medio-lateral oblique", View.MLO)),
    **_both("399260004", "R-10224", ViewCode("ML", "medio-lateral")),
    **_both("399352003", "R-10228", ViewCode("LM", "latero-medial")),
    **_both("399099002", "R-10230", ViewCode("LMO", "latero-medial oblique")),
    **_both("399192008", "R-1024A", ViewCode("XCCL", "cranio-caudal exaggerated laterally")),
    **_both("399101009", "R-1024B", ViewCode("XCCM", "cranio-caudal exaggerated medially")),
    **_both("399196006", "R-10244", ViewCode("FB", "caudo-cranial (from below)")),
    **_both("399188001", "R-102D0", ViewCode("SIO", "superolateral to inferomedial oblique")),
    **_both("441555000", "R-40AAA", ViewCode("ISO", "inferomedial to superolateral oblique")),
    **_both("127457009", "G-8310", ViewCode("SPECIMEN", "tissue specimen from breast")),
}

#: DICOM CID 4015 "View Modifier for Mammography": any of them makes an image diagnostic
#: work-up rather than a screening view.
VIEW_MODIFIER_CODES: dict[tuple[str, str], ViewCode] = {
    **_both("399055006", "R-102D7", ViewCode("S", "spot compression")),
    **_both("399163009", "R-102D6", ViewCode("M", "magnification")),
    **_both("399209000", "R-102D5", ViewCode("ID", "implant displaced")),
    **_both("399161006", "R-102D2", ViewCode("CV", "cleavage")),
    **_both("399011000", "R-102D1", ViewCode("AT", "axillary tail")),
    **_both("399226006", "R-102D4", ViewCode("RM", "rolled medial")),
    **_both("399197002", "R-102D3", ViewCode("RL", "rolled lateral")),
    **_both("415670009", "R-102C9", ViewCode("RS", "rolled superior")),
    **_both("414493004", "R-102CA", ViewCode("RI", "rolled inferior")),
    **_both("399110001", "R-102C2", ViewCode("TAN", "tangential")),
    **_both("442581004", "R-40AB3", ViewCode("NP", "nipple in profile")),
    **_both("442580003", "R-40AB2", ViewCode("AX", "axillary tissue")),
    **_both("441752004", "P2-00161", ViewCode("AC", "anterior compression")),
    **_both("442593008", "R-40ABE", ViewCode("IMF", "infra-mammary fold")),
}

#: Code Meanings accepted when a View Code Sequence uses a code scheme we do not know.
_STANDARD_VIEW_MEANINGS = {
    "CRANIO CAUDAL": View.CC,
    "CRANIOCAUDAL": View.CC,
    "MEDIO LATERAL OBLIQUE": View.MLO,
    "MEDIOLATERAL OBLIQUE": View.MLO,
}

#: View Position values (DX Positioning, as mammography devices send them).
_VIEW_POSITIONS = {"CC": View.CC, "MLO": View.MLO}
_VIEW_POSITION_WITH_SIDE = re.compile(r"^([LR])[\s_-]?(CC|MLO)$")


@dataclass(frozen=True)
class VendorRule:
    """A vendor's synthetic 2D product: Manufacturer pattern and text markers.

    ``markers`` are regular expressions searched in the normalised (upper case, ``-``/``_``
    as spaces) Image Type, Series Description, Protocol Name, Acquisition Device Processing
    Description and Derivation Description.
    """

    product: str
    manufacturer: str
    markers: tuple[str, ...]

    def matches(self, manufacturer: str, texts: str) -> bool:
        if not re.search(self.manufacturer, manufacturer):
            return False
        return any(re.search(marker, texts) for marker in self.markers)


SYNTHETIC_2D_VENDOR_RULES: tuple[VendorRule, ...] = (
    VendorRule("Hologic C-View", r"\bHOLOGIC\b", (r"\bC ?VIEW\b",)),
    VendorRule("Siemens Insight 2D", r"\bSIEMENS\b", (r"\bINSIGHT ?2D\b",)),
    VendorRule("GE V-Preview", r"^GE\b|\bGE (MEDICAL|HEALTHCARE)\b", (r"\bV ?PREVIEW\b",)),
    VendorRule("Fujifilm S-View", r"\bFUJI", (r"\bS ?VIEW\b",)),
)

#: The Image Type value (value 3 or 4 by vendor) that marks a generated 2D image.
GENERATED_2D = "GENERATED_2D"


@dataclass(frozen=True)
class Classification:
    """What the header says about one instance (see the module docstring for the rules)."""

    image_class: ImageClass
    view: View | None  # CC / MLO for standard views, else None
    view_label: str | None  # what the header said, e.g. "XCCL", "ML", "CC"
    laterality: Laterality | None
    scorable: bool
    reason: str | None  # why not scorable (admin-readable), None if scorable
    loopback: bool  # one of our own outputs coming back
    lossy: bool


# ---- small header readers ------------------------------------------------------------------
def header_text(ds: Dataset, keyword: str) -> str:
    """The element's value as stripped text ('' when absent or empty); multi-values joined."""
    try:
        value = ds.get(keyword)
    except Exception:  # a malformed value must not stop classification
        logger.warning("unreadable element %s", keyword)
        return ""
    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v).strip() for v in value)
    return str(value).strip()


def _values(ds: Dataset, keyword: str) -> list[str]:
    text = header_text(ds, keyword)
    return [v.strip().upper() for v in text.split("\\") if v.strip()] if text else []


def header_items(ds: Dataset, keyword: str) -> list[Dataset]:
    try:
        seq = ds.get(keyword)
    except Exception:
        logger.warning("unreadable sequence %s", keyword)
        return []
    return list(seq) if seq else []


def _nested_items(ds: Dataset, keyword: str) -> Iterator[Dataset]:
    """Items of ``keyword`` at the top level, then in the shared functional groups."""
    yield from header_items(ds, keyword)
    for shared in header_items(ds, "SharedFunctionalGroupsSequence"):
        yield from header_items(shared, keyword)
        for group in shared:  # one more level: functional group macros
            if group.VR == "SQ" and group.value:
                for item in group.value:
                    yield from header_items(item, keyword)


def _code_key(item: Dataset) -> tuple[str, str]:
    scheme = header_text(item, "CodingSchemeDesignator").upper()
    if scheme in ("SNM3", "99SDM"):  # historical designators of SNOMED-RT
        scheme = "SRT"
    if scheme == "SNOMED":
        scheme = "SCT"
    return scheme, header_text(item, "CodeValue")


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[-_]", " ", text.upper())).strip()


def _is_yes(ds: Dataset, keyword: str) -> bool:
    return header_text(ds, keyword).upper() == "YES"


# ---- rules -----------------------------------------------------------------------------------
def is_lossy(ds: Dataset, transfer_syntax_uid: str | None = None) -> bool:
    """True when the pixels went through irreversible compression at some point."""
    flag = header_text(ds, "LossyImageCompression")
    if flag == "01":
        return True
    if transfer_syntax_uid is None:
        meta = getattr(ds, "file_meta", None)
        transfer_syntax_uid = header_text(meta, "TransferSyntaxUID") if meta is not None else ""
    return transfer_syntax_uid in LOSSY_TRANSFER_SYNTAXES and flag != "00"


def is_loopback(ds: Dataset, settings: Settings) -> bool:
    """One of our own outputs: our UID root, or our device named as (contributing) maker."""
    if header_text(ds, "SOPInstanceUID").startswith(settings.uid_root):
        return True
    ours = re.compile(rf"^{re.escape(OUR_DEVICE_NAME)}\b", re.IGNORECASE)
    sources = [ds, *header_items(ds, "ContributingEquipmentSequence")]
    return any(
        ours.match(header_text(item, kw))
        for item in sources
        for kw in ("Manufacturer", "ManufacturerModelName")
    )


def _synthetic_2d_rule(ds: Dataset, image_type: list[str]) -> str | None:
    """Name of the rule that marks the image as generated 2D, or None."""
    if GENERATED_2D in image_type:
        return "Image Type GENERATED_2D"
    manufacturer = _normalise(header_text(ds, "Manufacturer"))
    texts = " | ".join(
        _normalise(t)
        for t in (
            "\\".join(image_type),
            header_text(ds, "SeriesDescription"),
            header_text(ds, "ProtocolName"),
            header_text(ds, "AcquisitionDeviceProcessingDescription"),
            header_text(ds, "DerivationDescription"),
        )
    )
    for rule in SYNTHETIC_2D_VENDOR_RULES:
        if rule.matches(manufacturer, texts):
            return rule.product
    return None


def _sop_class_name(sop_class: str) -> str:
    if not sop_class:
        return "no SOP Class UID"
    name = UID(sop_class).name
    return name if name and name != sop_class else f"SOP Class {sop_class}"


def _looks_like_breast(ds: Dataset, modality: str, image_type: list[str]) -> bool:
    texts = _normalise(" ".join([*image_type, header_text(ds, "SeriesDescription"),
                                 header_text(ds, "BodyPartExamined")]))
    return modality == "MG" or bool(re.search(r"\bBREAST\b|\bTOMO|\bDBT\b|MAMM", texts))


def _image_class(ds: Dataset, sop_class: str) -> tuple[ImageClass, str | None]:
    """The image class and, when the class itself is never scored, why."""
    modality = header_text(ds, "Modality").upper()
    image_type = _values(ds, "ImageType")
    name = _sop_class_name(sop_class)
    if sop_class == MG_FOR_PRESENTATION:
        image_class = (ImageClass.SYNTHETIC2D if _synthetic_2d_rule(ds, image_type)
                       else ImageClass.FFDM)
        if header_text(ds, "PresentationIntentType").upper() == "FOR PROCESSING":
            return image_class, "For Processing image (Presentation Intent Type FOR PROCESSING)"
        return image_class, None
    if sop_class == MG_FOR_PROCESSING:
        return ImageClass.FFDM, f"For Processing image ({name}): raw detector data"
    if sop_class == BREAST_TOMOSYNTHESIS:
        return ImageClass.DBT, None
    if sop_class == BREAST_PROJECTION_FOR_PRESENTATION:
        if _synthetic_2d_rule(ds, image_type):
            return ImageClass.SYNTHETIC2D, None
        return ImageClass.PROJECTION, "tomosynthesis projection (Breast Projection X-Ray): stored"
    if sop_class == BREAST_PROJECTION_FOR_PROCESSING:
        return ImageClass.PROJECTION, (
            f"For Processing image ({name}): tomosynthesis projection raw data, stored"
        )
    if sop_class in SECONDARY_CAPTURE_CLASSES | CT_CLASSES and _looks_like_breast(
        ds, modality, image_type
    ):
        return ImageClass.OTHER, (
            f"breast image archived as {name} (e.g. tomosynthesis a vendor stores as "
            "secondary capture or CT): only Breast Tomosynthesis Image Storage is scored"
        )
    if modality == "MG" and sop_class in (DX_FOR_PRESENTATION, DX_FOR_PROCESSING,
                                          COMPUTED_RADIOGRAPHY):
        return ImageClass.OTHER, (
            f"mammogram stored as {name}: only Digital Mammography X-Ray Image Storage is scored"
        )
    return ImageClass.OTHER, f"not a mammogram: modality {modality or 'missing'} ({name})"


@dataclass(frozen=True)
class _ViewReading:
    view: View | None
    label: str | None
    problem: str | None  # None when the view is a standard screening view
    laterality_hint: Laterality | None = None  # from values like "LCC" in View Position


def _read_view(ds: Dataset) -> _ViewReading:
    unknown_code: str | None = None
    for item in _nested_items(ds, "ViewCodeSequence"):
        key = _code_key(item)
        meaning = header_text(item, "CodeMeaning")
        code = VIEW_CODES.get(key)
        if code is None:
            by_meaning = _STANDARD_VIEW_MEANINGS.get(_normalise(meaning))
            if by_meaning is not None:
                return _ViewReading(by_meaning, by_meaning.value, None)
            unknown_code = f"{meaning or '?'} ({key[0]} {key[1]})"
            continue
        if code.view is None:
            return _ViewReading(None, code.label,
                                f"non-standard view {code.label} ({code.meaning})")
        return _ViewReading(code.view, code.label, None)
    position = _normalise(header_text(ds, "ViewPosition"))
    if position:
        if position in _VIEW_POSITIONS:
            return _ViewReading(_VIEW_POSITIONS[position], position, None)
        match = _VIEW_POSITION_WITH_SIDE.match(position)
        if match:
            view = _VIEW_POSITIONS[match.group(2)]
            return _ViewReading(view, view.value, None, Laterality(match.group(1)))
        return _ViewReading(None, position[:16], f"non-standard view {position}")
    if unknown_code:
        return _ViewReading(None, unknown_code[:16], f"unrecognised view code {unknown_code}")
    return _ViewReading(None, None, "view unreadable (no View Code Sequence, no View Position)")


def _read_laterality(ds: Dataset, hint: Laterality | None) -> tuple[Laterality | None, str | None]:
    candidates: list[str] = [header_text(ds, "ImageLaterality"), header_text(ds, "Laterality")]
    candidates += [header_text(item, "FrameLaterality") for item in _nested_items(ds, "FrameAnatomySequence")]
    seen: list[str] = []
    for value in candidates:
        value = value.upper()
        if value in ("L", "R"):
            return Laterality(value), None
        if value:
            seen.append(value)
    if hint is not None:
        return hint, None
    if seen:
        return None, f"laterality unreadable (value {seen[0]!r}, expected L or R)"
    return None, "laterality unreadable (no Image Laterality or Laterality)"


def view_modifiers(ds: Dataset) -> list[str]:
    """Names of the View Modifier Code Sequence items (top level and inside the view code)."""
    items = list(_nested_items(ds, "ViewModifierCodeSequence"))
    for view_item in _nested_items(ds, "ViewCodeSequence"):
        items += header_items(view_item, "ViewModifierCodeSequence")
    names: list[str] = []
    for item in items:
        code = VIEW_MODIFIER_CODES.get(_code_key(item))
        name = code.meaning if code else (header_text(item, "CodeMeaning") or header_text(item, "CodeValue"))
        if name and name not in names:
            names.append(name)
    return names


def _parse_dicom_time(text: str) -> tuple[int, int, int, int] | None:
    text = text.strip().replace(":", "")
    match = re.fullmatch(r"(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,6}))?", text)
    if not match:
        return None
    hour, minute, second, frac = match.groups()
    micro = int((frac or "0").ljust(6, "0"))
    return int(hour), int(minute or 0), int(second or 0), micro


def parse_offset(text: str) -> timezone | None:
    """A DICOM Timezone Offset From UTC ('+hhmm' / '-hhmm') as a tzinfo."""
    match = re.fullmatch(r"([+-])(\d{2})(\d{2})", text.strip())
    if not match:
        return None
    sign = 1 if match.group(1) == "+" else -1
    delta = timedelta(hours=int(match.group(2)), minutes=int(match.group(3)))
    if delta > timedelta(hours=14):
        return None
    return timezone(sign * delta)


def study_datetime(ds: Dataset) -> datetime | None:
    """Study Date/Time as an aware datetime (Timezone Offset From UTC, else server local time)."""
    for date_kw, time_kw in (("StudyDate", "StudyTime"), ("ContentDate", "ContentTime")):
        date = header_text(ds, date_kw)
        if not re.fullmatch(r"\d{8}", date):
            continue
        hms = _parse_dicom_time(header_text(ds, time_kw)) or (0, 0, 0, 0)
        try:
            naive = datetime(int(date[:4]), int(date[4:6]), int(date[6:8]), *hms)
        except ValueError:
            continue
        tz = parse_offset(header_text(ds, "TimezoneOffsetFromUTC"))
        return naive.replace(tzinfo=tz) if tz else naive.astimezone()
    return None


def procedure_texts(ds: Dataset) -> list[str]:
    """Procedure code values/meanings, requested procedure codes and the study description."""
    texts: list[str] = []

    def codes(items: Iterable[Dataset]) -> None:
        for item in items:
            texts.extend(t for t in (header_text(item, "CodeValue"), header_text(item, "CodeMeaning")) if t)

    codes(header_items(ds, "ProcedureCodeSequence"))
    codes(header_items(ds, "RequestedProcedureCodeSequence"))
    for request in header_items(ds, "RequestAttributesSequence"):
        codes(header_items(request, "RequestedProcedureCodeSequence"))
        texts.append(header_text(request, "RequestedProcedureDescription"))
    texts.append(header_text(ds, "RequestedProcedureDescription"))
    texts.append(header_text(ds, "StudyDescription"))
    return [t for t in texts if t]


def _screening_problem(ds: Dataset, settings: Settings) -> str | None:
    patterns = settings.screening_procedures
    if not patterns:
        return None
    texts = procedure_texts(ds)
    for text in texts:
        if any(fnmatchcase(text.upper(), p.upper()) for p in patterns):
            return None
    if not texts:
        return ("no procedure code or study description to match "
                "TRIAGE_SCREENING_PROCEDURES: not a configured screening procedure")
    shown = ", ".join(repr(t) for t in texts[:3])
    return f"not a configured screening procedure ({shown} match no TRIAGE_SCREENING_PROCEDURES)"


def _age_problem(ds: Dataset, settings: Settings, now: datetime) -> str | None:
    if settings.max_study_age_hours <= 0:
        return None
    when = study_datetime(ds)
    if when is None:
        return None  # nothing to judge: never skip for a missing date
    if now - when > timedelta(hours=settings.max_study_age_hours):
        return (f"study date {when.isoformat(timespec='minutes')} is older than "
                f"TRIAGE_MAX_STUDY_AGE_HOURS={settings.max_study_age_hours:g} "
                "(prior or late-arriving exam)")
    return None


def classify_instance(
    ds: Dataset, settings: Settings, *, now: datetime | None = None
) -> Classification:
    """Classify a header-only dataset (no pixels needed); never raises on odd headers."""
    now = now or datetime.now(UTC)
    sop_class = header_text(ds, "SOPClassUID")
    image_class, class_reason = _image_class(ds, sop_class)
    reading = _read_view(ds)
    laterality, laterality_problem = _read_laterality(ds, reading.laterality_hint)
    lossy = is_lossy(ds)
    if is_loopback(ds, settings):
        return Classification(
            image_class=image_class, view=reading.view, view_label=reading.label,
            laterality=laterality, scorable=False, lossy=lossy, loopback=True,
            reason="loopback: one of our own outputs came back (our UID root or device name)",
        )

    reasons: list[str] = [class_reason] if class_reason else []
    if image_class in SCORABLE_CLASSES and class_reason is None:
        if reading.problem:
            reasons.append(reading.problem)
        if laterality_problem:
            reasons.append(laterality_problem)
    if image_class is not ImageClass.OTHER:
        modifiers = view_modifiers(ds)
        if modifiers:
            reasons.append("view modifier: " + ", ".join(modifiers))
        if _is_yes(ds, "PartialView"):
            description = header_text(ds, "PartialViewDescription")
            reasons.append("partial view" + (f" ({description})" if description else ""))
        if _is_yes(ds, "BreastImplantPresent"):
            reasons.append("breast implant present")
        if _is_yes(ds, "QualityControlImage"):
            reasons.append("quality control image")
    for problem in (_age_problem(ds, settings, now), _screening_problem(ds, settings)):
        if problem:
            reasons.append(problem)

    return Classification(
        image_class=image_class,
        view=reading.view,
        view_label=reading.label,
        laterality=laterality,
        scorable=not reasons,
        reason="; ".join(reasons) if reasons else None,
        loopback=False,
        lossy=lossy,
    )
