"""What every output object shares: identity of the product, patient/study attributes copied
from the source instances, Contributing Equipment, source references, the investigational
wording, and geometry helpers mapping model-input pixels to the source image.

Coordinates: SCOORD values are (column, row) with (0, 0) at the top-left corner of the
top-left pixel (PS3.3 C.18.6.1.2), so the centre of source pixel (r, c) is (c + 0.5, r + 0.5).
"""

from __future__ import annotations

import copy
import datetime
import importlib.metadata
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from triage.errors import InvalidDicom
from triage.results import ExamResult, MemberInfo, RoiPatch, ViewScore
from triage.vocabulary import NOT_TRIAGED, PARTIAL, Laterality

MANUFACTURER = "triage"
MODEL_NAME = "triage AI worklist triage for screening mammography"

#: Shown in every output. Triage is passive notification, never a diagnosis.
INVESTIGATIONAL_NOTE = (
    "INVESTIGATIONAL: AI worklist triage result, not a diagnosis and not for diagnostic "
    "use. It only reorders the reading worklist; it never removes an exam from any worklist."
)
UNCALIBRATED = "UNCALIBRATED / INVESTIGATIONAL"
UNCALIBRATED_NOTE = (
    f"{UNCALIBRATED}: not every model has verified published weights; the score is not "
    "calibrated and the exam is NOT TRIAGED."
)
_UNVERIFIED_REASON = "model weights are not verified (uncalibrated)"

#: DICOM multi-frame SOP classes whose regions need a Referenced Frame Number.
BREAST_TOMOSYNTHESIS = "1.2.840.10008.5.1.4.1.1.13.1.3"

#: Patient and study attributes copied verbatim from the source (PS3.3 Patient, General
#: Study, Patient Study modules and SOP Common's Timezone Offset). Type 2 ones are written
#: empty when the source lacks them.
_COPIED = (
    "PatientName", "PatientID", "IssuerOfPatientID", "IssuerOfPatientIDQualifiersSequence",
    "TypeOfPatientID", "OtherPatientIDsSequence", "PatientBirthDate", "PatientSex",
    "PatientAge", "PatientSize", "PatientWeight", "StudyInstanceUID", "StudyDate",
    "StudyTime", "AccessionNumber", "IssuerOfAccessionNumberSequence",
    "ReferringPhysicianName", "StudyID", "StudyDescription", "ProcedureCodeSequence",
    "TimezoneOffsetFromUTC",
)
_TYPE2 = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
    "AccessionNumber", "ReferringPhysicianName", "StudyID",
)


def software_version() -> str:
    """Version of the installed ``triage`` distribution."""
    try:
        return importlib.metadata.version("triage")
    except importlib.metadata.PackageNotFoundError:  # running from a bare checkout
        return "0+unknown"


def software_versions(result: ExamResult) -> list[str]:
    """Software Versions (0018,1020): the product, then the model set."""
    return [software_version(), result.model_set_version[:64]]


@dataclass(frozen=True)
class DocumentReference:
    """An SR we sent before, named by a re-score's SR (Predecessor Documents Sequence)."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str

    @classmethod
    def from_dataset(cls, ds: Dataset) -> DocumentReference:
        return cls(
            study_instance_uid=str(ds.StudyInstanceUID),
            series_instance_uid=str(ds.SeriesInstanceUID),
            sop_instance_uid=str(ds.SOPInstanceUID),
            sop_class_uid=str(ds.SOPClassUID),
        )


def hierarchical_references(
    refs: Iterable[tuple[str, str, str, str]],
) -> list[Dataset]:
    """Items of a Hierarchical SOP Instance Reference Macro sequence.

    ``refs`` are (study UID, series UID, SOP class UID, SOP instance UID), grouped by
    study then series in first-seen order.
    """
    studies: dict[str, dict[str, list[tuple[str, str]]]] = {}
    for study, series, sop_class, sop_instance in refs:
        studies.setdefault(study, {}).setdefault(series, [])
        if (sop_class, sop_instance) not in studies[study][series]:
            studies[study][series].append((sop_class, sop_instance))
    items = []
    for study, series_map in studies.items():
        study_item = Dataset()
        study_item.StudyInstanceUID = study
        study_item.ReferencedSeriesSequence = []
        for series, sops in series_map.items():
            series_item = Dataset()
            series_item.SeriesInstanceUID = series
            series_item.ReferencedSOPSequence = []
            for sop_class, sop_instance in sops:
                sop_item = Dataset()
                sop_item.ReferencedSOPClassUID = sop_class
                sop_item.ReferencedSOPInstanceUID = sop_instance
                series_item.ReferencedSOPSequence.append(sop_item)
            study_item.ReferencedSeriesSequence.append(series_item)
        items.append(study_item)
    return items


def predecessor_items(predecessor: DocumentReference) -> list[Dataset]:
    """Predecessor Documents Sequence naming the SR a re-score replaces."""
    return hierarchical_references([(
        predecessor.study_instance_uid, predecessor.series_instance_uid,
        predecessor.sop_class_uid, predecessor.sop_instance_uid,
    )])


def evidence_items(sources: Sequence[Dataset]) -> list[Dataset]:
    """Current Requested Procedure Evidence Sequence for the source instances."""
    return hierarchical_references(
        (str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPClassUID),
         str(ds.SOPInstanceUID))
        for ds in sources
    )


def scored_sources(result: ExamResult, sources: Sequence[Dataset]) -> list[Dataset]:
    """The source datasets of the scored views, in the order of ``result.views``.

    Raises InvalidDicom when a scored instance is missing or a source belongs to another
    study: outputs must land in the source study.
    """
    by_uid: dict[str, Dataset] = {}
    for ds in sources:
        if str(ds.StudyInstanceUID) != result.study_instance_uid:
            raise InvalidDicom(
                f"source instance {ds.SOPInstanceUID} belongs to study {ds.StudyInstanceUID}, "
                f"not to the scored study {result.study_instance_uid}; pass only that study's "
                "instances to the output builders"
            )
        by_uid[str(ds.SOPInstanceUID)] = ds
    ordered: list[Dataset] = []
    for view in result.views:
        found = by_uid.get(view.sop_instance_uid)
        if found is None:
            raise InvalidDicom(
                f"scored instance {view.sop_instance_uid} of study "
                f"{result.study_instance_uid} is not among the source datasets; load it "
                "from the spool before building outputs"
            )
        if found not in ordered:
            ordered.append(found)
    if not ordered:
        raise InvalidDicom(
            f"study {result.study_instance_uid}: the result has no scored views, "
            "so there is nothing to reference"
        )
    return ordered


def copy_patient_and_study(target: Dataset, source: Dataset) -> None:
    """Copy Specific Character Set and the patient/study attributes from ``source``."""
    if "SpecificCharacterSet" in source:
        target.SpecificCharacterSet = source.SpecificCharacterSet
    elif "SpecificCharacterSet" in target:
        del target.SpecificCharacterSet
    for keyword in _COPIED:
        if keyword in source:
            target[keyword] = copy.deepcopy(source[keyword])
        elif keyword in _TYPE2:
            setattr(target, keyword, None)


def source_now(source: Dataset) -> datetime.datetime:
    """Now, in the time zone of the source's Timezone Offset From UTC (copied to the
    output, where it qualifies every date and time), else in local time."""
    offset = str(source.get("TimezoneOffsetFromUTC", "") or "")
    match = re.fullmatch(r"([+-])(\d\d)(\d\d)", offset.strip())
    if not match:
        return datetime.datetime.now().astimezone()
    sign = 1 if match.group(1) == "+" else -1
    delta = datetime.timedelta(hours=int(match.group(2)), minutes=int(match.group(3)))
    return datetime.datetime.now(datetime.timezone(sign * delta))


def stamp_times(target: Dataset, source: Dataset) -> None:
    """Instance creation and content date/time (and secondary capture date/time when the
    object has them) in the source's time zone, so the copied offset holds for them."""
    now = source_now(source)
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    target.InstanceCreationDate, target.InstanceCreationTime = date, time
    target.ContentDate, target.ContentTime = date, time
    if "DateOfSecondaryCapture" in target:
        target.DateOfSecondaryCapture, target.TimeOfSecondaryCapture = date, time


def set_equipment(target: Dataset, result: ExamResult, institution_name: str = "") -> None:
    """General Equipment module naming us as the maker of the output."""
    target.Manufacturer = MANUFACTURER
    target.ManufacturerModelName = MODEL_NAME
    target.SoftwareVersions = software_versions(result)
    if institution_name:
        target.InstitutionName = institution_name


def algorithm_summary(result: ExamResult) -> str:
    """One line per included member: name, version, weight, weights sha256 and status."""
    lines = []
    for m in result.members:
        state = "included" if m.included else f"excluded ({m.failure_reason or 'failed'})"
        lines.append(
            f"{m.name} {m.version} [{m.architecture}, {m.modality}] weight "
            f"{m.ensemble_weight:g}, weights sha256 {m.weights_sha256 or 'none'}, "
            f"{m.weights_status.value}, {state}"
        )
    return "; ".join(lines)


def contributing_equipment(result: ExamResult, institution_name: str = "") -> hd.ContributingEquipment:
    """Contributing Equipment item naming the algorithm (IHE AI Results style).

    Purpose of Reference is (109102, DCM, "Processing Equipment"), CID 7005: equipment that
    processed composite instances to create new ones. (109103 "Modifying Equipment" is for
    equipment that changed an existing instance without creating a new one.)
    """
    return hd.ContributingEquipment(
        manufacturer=MANUFACTURER,
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=MODEL_NAME,
        software_versions=software_versions(result),
        institution_name=institution_name or None,
        contribution_description=(
            f"AI worklist triage, model set {result.model_set_version}: "
            f"{algorithm_summary(result)}"
        )[:1024],
    )


def contributing_equipment_item(result: ExamResult, institution_name: str = "") -> Dataset:
    """The same item as a plain Dataset (for objects built without highdicom)."""
    item = Dataset()
    item.update(contributing_equipment(result, institution_name))
    return item


def effective_category(result: ExamResult) -> tuple[str, str | None]:
    """(category, reason): NOT TRIAGED whenever the run is not verified; NOT TRIAGED or
    PARTIAL (the site's policy) with the gaps when the exam is not fully covered."""
    if not result.verified:
        reason = result.not_triaged_reason or _UNVERIFIED_REASON
        return NOT_TRIAGED, reason
    if result.category in (NOT_TRIAGED, PARTIAL):
        return result.category, result.not_triaged_reason or "not triaged"
    if result.coverage_gaps:  # never a priority level for a partial exam
        return NOT_TRIAGED, "partial exam: " + "; ".join(result.coverage_gaps)
    return result.category, None


def coverage_text(result: ExamResult) -> str | None:
    """The coverage flag as shown in every output, or None for a fully covered exam."""
    if result.coverage_gaps:
        return "PARTIAL EXAM: " + "; ".join(result.coverage_gaps)
    if result.partial:
        return "PARTIAL EXAM: not every standard view was received in time"
    return None


def shows_scores(result: ExamResult) -> bool:
    """Whether an image output may burn in scores: only for a triaged (verified, fully
    covered) run; a NOT TRIAGED or PARTIAL score is for administrators only."""
    return effective_category(result)[0] not in (NOT_TRIAGED, PARTIAL)


def views_by_source(result: ExamResult) -> dict[str, list[ViewScore]]:
    """Member outputs grouped by source image (SOP Instance UID), first-seen order."""
    grouped: dict[str, list[ViewScore]] = {}
    for view in result.views:
        grouped.setdefault(view.sop_instance_uid, []).append(view)
    return grouped


def breast_code(laterality: Laterality) -> hd.sr.CodedConcept:
    """SCT 80248007 Left breast / 73056007 Right breast."""
    code = codes.SCT.LeftBreast if laterality is Laterality.LEFT else codes.SCT.RightBreast
    return hd.sr.CodedConcept.from_code(code)


def is_multiframe(ds: Dataset) -> bool:
    return str(ds.SOPClassUID) == BREAST_TOMOSYNTHESIS or int(ds.get("NumberOfFrames", 1) or 1) > 1


def roi_source_box(view: ViewScore, roi: RoiPatch) -> tuple[int, int, int, int]:
    """(top, left, bottom, right), inclusive, of an ROI patch in source pixels."""
    return view.frame.box_to_source(roi.top, roi.left, roi.height, roi.width)


def box_polyline(box: tuple[int, int, int, int]) -> np.ndarray:
    """Closed POLYLINE (5 points, column/row) around whole source pixels of ``box``."""
    top, left, bottom, right = box
    x0, y0, x1, y1 = float(left), float(top), float(right + 1), float(bottom + 1)
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=np.float64)


@dataclass(frozen=True)
class SaliencyPeak:
    """The maximum of a saliency map, on the model input and on the source image."""

    value: float
    input_row: float
    input_col: float
    source_row: float
    source_col: float

    def point(self) -> np.ndarray:
        """SCOORD POINT (column, row) at the centre of the source pixel."""
        return np.array([[self.source_col + 0.5, self.source_row + 0.5]], dtype=np.float64)


def saliency_peak(view: ViewScore, saliency: np.ndarray) -> SaliencyPeak:
    """Peak of a saliency map that spans the model input (any resolution).

    Cell (i, j) of an (h, w) map covers input rows [i*H/h, (i+1)*H/h); its centre is
    mapped to the source through ``view.frame`` and clipped to the image. Cells whose
    centre lies on padding (no source pixel: the overlay shows no saliency there) are left
    out; only a map with no cell over the image falls back to every cell.
    """
    sal = np.asarray(saliency, dtype=np.float64)
    if sal.ndim != 2 or sal.size == 0:
        raise ValueError(f"saliency map must be 2-D and non-empty, got shape {sal.shape}")
    frame = view.frame
    in_h, in_w = frame.input_shape
    centre_rows = (np.arange(sal.shape[0]) + 0.5) * in_h / sal.shape[0] - 0.5
    centre_cols = (np.arange(sal.shape[1]) + 0.5) * in_w / sal.shape[1] - 0.5
    top, left = frame.pad_top - frame.window_top, frame.pad_left - frame.window_left
    crop_h, crop_w = frame.cropped_shape
    on_rows = (centre_rows >= top) & (centre_rows <= top + crop_h - 1)
    on_cols = (centre_cols >= left) & (centre_cols <= left + crop_w - 1)
    on_image = on_rows[:, None] & on_cols[None, :]
    candidates = np.where(on_image, sal, -np.inf) if on_image.any() else sal
    i, j = np.unravel_index(int(np.argmax(candidates)), sal.shape)
    row_in, col_in = float(centre_rows[i]), float(centre_cols[j])
    row_s, col_s = view.frame.to_source(row_in, col_in)
    rows, cols = view.frame.source_shape
    row_s = float(min(max(row_s, 0.0), rows - 1))
    col_s = float(min(max(col_s, 0.0), cols - 1))
    return SaliencyPeak(float(sal[i, j]), row_in, col_in, row_s, col_s)


def weighted_members(views: Sequence[ViewScore], members: Mapping[str, MemberInfo]) -> list[
    tuple[ViewScore, float]
]:
    """Views with their normalised ensemble weights (equal when weights are missing)."""
    raw = [max(members[v.member].ensemble_weight, 0.0) if v.member in members else 0.0
           for v in views]
    total = sum(raw)
    if total <= 0:
        return [(v, 1.0 / len(views)) for v in views]
    return [(v, w / total) for v, w in zip(views, raw, strict=True)]


def image_descriptors(ds: Dataset, *, with_dates: bool = False) -> list[hd.sr.ContentItem]:
    """Image Library entry descriptors (HAS ACQ CONTEXT) from what the source carries.

    Laterality (CID 6022), view (CID 4014, copied from View Code Sequence), Patient
    Orientation row/column, pixel spacing (Imager Pixel Spacing, else Pixel Spacing) and,
    ``with_dates`` (TID 4020), Study Date/Time and Content Date/Time, in TID 4020 order.
    """
    acq = hd.sr.RelationshipTypeValues.HAS_ACQ_CONTEXT
    items: list[hd.sr.ContentItem] = []
    lat = ds.get("ImageLaterality") or ds.get("Laterality")
    if lat in ("L", "R"):
        side = codes.SCT.Left if lat == "L" else codes.SCT.Right
        items.append(hd.sr.CodeContentItem(
            name=codes.DCM.ImageLaterality, value=side, relationship_type=acq))
    view_seq = ds.get("ViewCodeSequence")
    if view_seq:
        code = view_seq[0]
        items.append(hd.sr.CodeContentItem(
            name=codes.DCM.ImageView,
            value=hd.sr.CodedConcept(code.CodeValue, code.CodingSchemeDesignator,
                                     code.CodeMeaning),
            relationship_type=acq))
    orientation = ds.get("PatientOrientation")
    if orientation and len(orientation) == 2 and all(orientation):
        items.append(hd.sr.TextContentItem(
            name=codes.DCM.PatientOrientationRow, value=str(orientation[0]),
            relationship_type=acq))
        items.append(hd.sr.TextContentItem(
            name=codes.DCM.PatientOrientationColumn, value=str(orientation[1]),
            relationship_type=acq))
    if with_dates:
        for name, keyword, cls in (
            (codes.DCM.StudyDate, "StudyDate", hd.sr.DateContentItem),
            (codes.DCM.StudyTime, "StudyTime", hd.sr.TimeContentItem),
            (codes.DCM.ContentDate, "ContentDate", hd.sr.DateContentItem),
            (codes.DCM.ContentTime, "ContentTime", hd.sr.TimeContentItem),
        ):
            if ds.get(keyword):
                items.append(cls(name=name, value=str(ds.get(keyword)), relationship_type=acq))
    spacing = ds.get("ImagerPixelSpacing") or ds.get("PixelSpacing")
    if spacing and len(spacing) == 2:
        items.append(hd.sr.NumContentItem(
            name=codes.DCM.HorizontalPixelSpacing, value=float(spacing[1]),
            unit=codes.UCUM.Millimeter, relationship_type=acq))
        items.append(hd.sr.NumContentItem(
            name=codes.DCM.VerticalPixelSpacing, value=float(spacing[0]),
            unit=codes.UCUM.Millimeter, relationship_type=acq))
    return items
