"""Mammography CAD SR (SOP class 1.2.840.10008.5.1.4.1.1.88.50, TID 4000), built with pydicom.

highdicom has no TID 4000 builder; its content-item classes (plain pydicom Datasets) are
used for the value items and the document is assembled here. Tree:

    CONTAINER (111036, DCM, "Mammography CAD Report")              TID 4000
      HAS CONCEPT MOD  Language of Content Item and Descendants = en-US
      CONTAINS CONTAINER (111028, DCM, "Image Library")
        CONTAINS IMAGE  (one per scored source, TID 4020; DBT frames get their own entry)
          HAS ACQ CONTEXT Image Laterality, Image View, Patient Orientation Row/Column,
                          Study Date, Content Date/Time, Horizontal/Vertical Pixel Spacing
      CONTAINS CODE (111017, DCM, "CAD Processing and Findings Summary") = CID 6047:
               111241 "All algorithms succeeded; without findings",
               111242 "All algorithms succeeded; with findings",
               111243 / 111244 "Not all algorithms succeeded; without / with findings"
        INFERRED FROM CONTAINER (111034, DCM, "Individual Impression/Recommendation")  TID 4003
          HAS CONCEPT MOD CODE Rendering Intent = (111150) Presentation Required
          CONTAINS CODE (111059, DCM, "Single Image Finding") = (111099, DCM, "Selected region")
            HAS CONCEPT MOD CODE Rendering Intent = (111150)
            HAS CONCEPT MOD TEXT Algorithm Name / Algorithm Version    (TID 4019)
            HAS PROPERTIES NUM (111012, DCM, "Certainty of Finding"), unit %
            HAS PROPERTIES TEXT (111058, DCM, "Selected Region Description")
            HAS PROPERTIES SCOORD (111010, DCM, "Center") POINT
              R-SELECTED FROM -> Image Library entry
            HAS PROPERTIES SCOORD (111041, DCM, "Outline") POLYLINE
              R-SELECTED FROM -> Image Library entry
      CONTAINS CODE (111064, DCM, "Summary of Detections") = CID 6042 (111222 Succeeded,
               111223 Partially Succeeded, 111224 Failed)
        INFERRED FROM CONTAINER (111063, DCM, "Successful Detections") / (111025, "Failed ...")
          CONTAINS CODE (111022, DCM, "Detection Performed") = (111099) per member
            HAS CONCEPT MOD TEXT Algorithm Name / Version / Parameters  (TID 4019)
            R-INFERRED FROM -> Image Library entries
      CONTAINS CODE (111065, DCM, "Summary of Analyses") = Succeeded
        INFERRED FROM CONTAINER (111062, DCM, "Successful Analyses")
          CONTAINS CODE (111004, DCM, "Analysis Performed") =
                   (111233, DCM, "Individual Impression/Recommendation Analysis")
            HAS CONCEPT MOD TEXT Algorithm Name "triage ensemble" / Version = model set
            R-INFERRED FROM -> Image Library entries

A Single Image Finding is written per scored view whose ensemble (weight-averaged)
malignant probability reaches ``settings.cad_certainty_threshold``; Certainty of Finding
is that probability in percent. Its Center is the malignant saliency peak and its Outline
the highest-attention ROI of the member contributing most (weight x peak), among the
members that produce a malignant saliency map; when none of the view's members has one
(e.g. DMV-CNN image-only alone) the finding has no Center and no Outline. Each member's
Detection Performed item lists its per-breast probabilities as Algorithm Parameters.
Whether the object may leave the product is decided by the caller with ``cad_sr_allowed``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian

from triage.config import Settings
from triage.outputs.common import (
    UNCALIBRATED,
    DocumentReference,
    box_polyline,
    contributing_equipment_item,
    copy_patient_and_study,
    coverage_text,
    evidence_items,
    image_descriptors,
    is_multiframe,
    predecessor_items,
    roi_source_box,
    saliency_peak,
    scored_sources,
    set_equipment,
    stamp_times,
    views_by_source,
    weighted_members,
)
from triage.outputs.uids import instance_uid, series_uid
from triage.results import BreastScore, ExamResult, MemberInfo, RoiPatch, ViewScore
from triage.vocabulary import Laterality, OutputKind

logger = logging.getLogger(__name__)

MAMMOGRAPHY_CAD_SR = "1.2.840.10008.5.1.4.1.1.88.50"
SERIES_NUMBER = 9902
SERIES_DESCRIPTION = "AI triage Mammography CAD SR - not for diagnosis"
ENSEMBLE_NAME = "triage ensemble"

_CV = hd.sr.CodedConcept
MAMMOGRAPHY_CAD_REPORT = _CV("111036", "DCM", "Mammography CAD Report")
IMAGE_LIBRARY = _CV("111028", "DCM", "Image Library")
PROCESSING_SUMMARY = _CV("111017", "DCM", "CAD Processing and Findings Summary")
ALL_WITH = _CV("111242", "DCM", "All algorithms succeeded; with findings")
ALL_WITHOUT = _CV("111241", "DCM", "All algorithms succeeded; without findings")
SOME_WITH = _CV("111244", "DCM", "Not all algorithms succeeded; with findings")
SOME_WITHOUT = _CV("111243", "DCM", "Not all algorithms succeeded; without findings")
INDIVIDUAL_IMPRESSION = _CV("111034", "DCM", "Individual Impression/Recommendation")
RENDERING_INTENT = _CV("111056", "DCM", "Rendering Intent")
PRESENTATION_REQUIRED = _CV(
    "111150", "DCM", "Presentation Required: Rendering device is expected to present")
SINGLE_IMAGE_FINDING = _CV("111059", "DCM", "Single Image Finding")
SELECTED_REGION = _CV("111099", "DCM", "Selected region")
SELECTED_REGION_DESCRIPTION = _CV("111058", "DCM", "Selected Region Description")
REGION_DESCRIPTION = (
    "region of highest malignant saliency of the AI triage ensemble (investigational, "
    "not a diagnosis)"
)
CERTAINTY_OF_FINDING = _CV("111012", "DCM", "Certainty of Finding")
CENTER = _CV("111010", "DCM", "Center")
OUTLINE = _CV("111041", "DCM", "Outline")
SUMMARY_OF_DETECTIONS = _CV("111064", "DCM", "Summary of Detections")
SUMMARY_OF_ANALYSES = _CV("111065", "DCM", "Summary of Analyses")
SUCCEEDED = _CV("111222", "DCM", "Succeeded")
PARTIALLY_SUCCEEDED = _CV("111223", "DCM", "Partially Succeeded")
FAILED = _CV("111224", "DCM", "Failed")
SUCCESSFUL_DETECTIONS = _CV("111063", "DCM", "Successful Detections")
FAILED_DETECTIONS = _CV("111025", "DCM", "Failed Detections")
SUCCESSFUL_ANALYSES = _CV("111062", "DCM", "Successful Analyses")
DETECTION_PERFORMED = _CV("111022", "DCM", "Detection Performed")
ANALYSIS_PERFORMED = _CV("111004", "DCM", "Analysis Performed")
INDIVIDUAL_ANALYSIS = _CV("111233", "DCM", "Individual Impression/Recommendation Analysis")
ALGORITHM_NAME = _CV("111001", "DCM", "Algorithm Name")
ALGORITHM_VERSION = _CV("111003", "DCM", "Algorithm Version")
ALGORITHM_PARAMETERS = _CV("111002", "DCM", "Algorithm Parameters")
PERCENT = _CV("%", "UCUM", "Percent")

_R = hd.sr.RelationshipTypeValues


def cad_sr_allowed(result: ExamResult, settings: Settings) -> bool:
    """True when the Mammography CAD SR of ``result`` may be sent: only for a verified run,
    unless the operator explicitly allows unverified CAD output for testing."""
    return result.verified or settings.send_unverified_cad


@dataclass(frozen=True)
class CadFinding:
    """One single-image finding of the ensemble on one scored view."""

    sop_instance_uid: str
    certainty: float  # ensemble malignant probability, 0..1
    center: tuple[float, float] | None  # source (row, col); None: no member has saliency
    center_frame: int | None  # 1-based, DBT only
    outline: tuple[int, int, int, int] | None  # source (top, left, bottom, right)
    outline_frame: int | None


def cad_findings(result: ExamResult, threshold: float) -> list[CadFinding]:
    """Findings of the views whose ensemble malignant probability is >= ``threshold``."""
    members = {m.name: m for m in result.members}
    findings = []
    for uid, views in views_by_source(result).items():
        weighted = weighted_members(views, members)
        certainty = float(sum(w * v.p_malignant for v, w in weighted))
        if certainty < threshold:
            continue
        peaks = [(view, weight, saliency_peak(view, view.saliency_malignant))
                 for view, weight in weighted if view.saliency_malignant is not None]
        if not peaks:  # no member of this view produces saliency: no location
            findings.append(CadFinding(
                sop_instance_uid=uid, certainty=min(max(certainty, 0.0), 1.0), center=None,
                center_frame=None, outline=None, outline_frame=None))
            continue
        lead, _, peak = max(peaks, key=lambda vwp: vwp[1] * vwp[2].value)
        roi: RoiPatch | None = max(lead.rois, key=lambda r: r.attention) if lead.rois else None
        slice_frame = lead.saliency_slice + 1 if lead.saliency_slice is not None else None
        findings.append(CadFinding(
            sop_instance_uid=uid,
            certainty=min(max(certainty, 0.0), 1.0),
            center=(peak.source_row, peak.source_col),
            center_frame=slice_frame,
            outline=roi_source_box(lead, roi) if roi else None,
            outline_frame=(roi.frame + 1) if (roi and roi.frame is not None) else slice_frame,
        ))
    return findings


class _Library:
    """Image Library entries keyed by (SOP Instance UID, frame); positions for R- refs."""

    def __init__(self, sources: Sequence[Dataset], findings: Sequence[CadFinding]) -> None:
        self._keys: list[tuple[str, int | None]] = []
        self._sources = {str(ds.SOPInstanceUID): ds for ds in sources}
        for ds in sources:
            self._keys.append((str(ds.SOPInstanceUID), None))
        for f in findings:
            if is_multiframe(self._sources[f.sop_instance_uid]):
                for frame in (f.center_frame, f.outline_frame):
                    key = (f.sop_instance_uid, frame)
                    if frame is not None and key not in self._keys:
                        self._keys.append(key)

    def path(self, uid: str, frame: int | None = None) -> list[int]:
        """Referenced Content Item Identifier of the entry (root=1, library=2nd item)."""
        key = (uid, frame if is_multiframe(self._sources[uid]) else None)
        if key not in self._keys:
            key = (uid, None)
        return [1, 2, self._keys.index(key) + 1]

    def container(self) -> Dataset:
        entries = []
        for uid, frame in self._keys:
            ds = self._sources[uid]
            item = _image_item(ds, frame, _R.CONTAINS)
            item.ContentSequence = [_plain(d) for d in image_descriptors(ds, with_dates=True)]
            entries.append(item)
        return _plain(
            hd.sr.ContainerContentItem(name=IMAGE_LIBRARY, relationship_type=_R.CONTAINS),
            entries,
        )


def _plain(item: Dataset, children: Sequence[Dataset] | None = None) -> Dataset:
    """A plain pydicom copy of a highdicom content item, with ``children`` as its Content
    Sequence (highdicom's items insist every child has a concept name; by-reference and
    IMAGE items of TID 4000 have none)."""
    plain = Dataset()
    for elem in item:
        if elem.keyword != "ContentSequence":
            plain.add(elem)
    if children:
        plain.ContentSequence = list(children)
    return plain


def _image_item(ds: Dataset, frame: int | None, relationship: _R) -> Dataset:
    """IMAGE content item without a concept name (TID 4020 row 1)."""
    item = Dataset()
    item.RelationshipType = relationship.value
    item.ValueType = "IMAGE"
    ref = Dataset()
    ref.ReferencedSOPClassUID = ds.SOPClassUID
    ref.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    if frame is not None:
        ref.ReferencedFrameNumber = frame
    item.ReferencedSOPSequence = [ref]
    return item


def _by_reference(relationship: _R, path: list[int]) -> Dataset:
    item = Dataset()
    item.RelationshipType = relationship.value
    item.ReferencedContentItemIdentifier = path
    return item


def _text(name: hd.sr.CodedConcept, value: str, rel: _R = _R.HAS_CONCEPT_MOD) -> Dataset:
    return _plain(hd.sr.TextContentItem(name=name, value=value[:1024] or "-",
                                        relationship_type=rel))


def _algorithm(name: str, version: str, parameters: Sequence[str] = ()) -> list[Dataset]:
    """TID 4019 Algorithm Identification rows."""
    items = [_text(ALGORITHM_NAME, name), _text(ALGORITHM_VERSION, version)]
    items.extend(_text(ALGORITHM_PARAMETERS, p) for p in parameters)
    return items


def _member_parameters(member: MemberInfo, verified: bool,
                       breasts: Sequence[BreastScore] = ()) -> list[str]:
    params = [
        f"weights sha256 {member.weights_sha256 or 'none'}",
        f"weights status {member.weights_status.value}",
        f"ensemble weight {member.ensemble_weight:g}",
    ]
    for breast in breasts:
        if member.name in breast.per_member:
            p_benign, p_malignant = breast.per_member[member.name]
            side = "left" if breast.laterality is Laterality.LEFT else "right"
            params.append(f"{side} breast p(malignant) {p_malignant:.4f} "
                          + ("p(benign) not estimated" if p_benign is None
                             else f"p(benign) {p_benign:.4f}"))
    if not verified:
        params.insert(0, UNCALIBRATED)
    if not member.included:
        params.append(f"failed: {member.failure_reason or 'unknown'}")
    return params


def _code(name: hd.sr.CodedConcept, value: hd.sr.CodedConcept, rel: _R,
          children: Sequence[Dataset] | None = None) -> Dataset:
    return _plain(hd.sr.CodeContentItem(name=name, value=value, relationship_type=rel), children)


def _container(name: hd.sr.CodedConcept, rel: _R, children: Sequence[Dataset]) -> Dataset:
    return _plain(hd.sr.ContainerContentItem(name=name, relationship_type=rel), children)


def _finding_item(finding: CadFinding, library: _Library, result: ExamResult) -> Dataset:
    children: list[Dataset] = [
        _code(RENDERING_INTENT, PRESENTATION_REQUIRED, _R.HAS_CONCEPT_MOD),
        *_algorithm(ENSEMBLE_NAME, result.model_set_version[:64]),
        _plain(hd.sr.NumContentItem(
            name=CERTAINTY_OF_FINDING, value=round(finding.certainty * 100, 4), unit=PERCENT,
            relationship_type=_R.HAS_PROPERTIES)),
        _text(SELECTED_REGION_DESCRIPTION, REGION_DESCRIPTION, _R.HAS_PROPERTIES),
    ]
    if finding.center is not None:
        row, col = finding.center
        children.append(_plain(
            hd.sr.ScoordContentItem(
                name=CENTER, graphic_type="POINT",
                graphic_data=np.array([[col + 0.5, row + 0.5]], dtype=np.float64),
                relationship_type=_R.HAS_PROPERTIES),
            [_by_reference(_R.SELECTED_FROM,
                           library.path(finding.sop_instance_uid, finding.center_frame))],
        ))
    if finding.outline is not None:
        children.append(_plain(
            hd.sr.ScoordContentItem(
                name=OUTLINE, graphic_type="POLYLINE", graphic_data=box_polyline(finding.outline),
                relationship_type=_R.HAS_PROPERTIES),
            [_by_reference(_R.SELECTED_FROM,
                           library.path(finding.sop_instance_uid, finding.outline_frame))],
        ))
    return _code(SINGLE_IMAGE_FINDING, SELECTED_REGION, _R.CONTAINS, children)


def _impressions(findings: Sequence[CadFinding], library: _Library,
                 result: ExamResult) -> list[Dataset]:
    return [
        _container(INDIVIDUAL_IMPRESSION, _R.INFERRED_FROM, [
            _code(RENDERING_INTENT, PRESENTATION_REQUIRED, _R.HAS_CONCEPT_MOD),
            _finding_item(finding, library, result),
        ])
        for finding in findings
    ]


def _detections(result: ExamResult, library: _Library) -> Dataset:
    by_member: dict[str, list[ViewScore]] = {}
    for v in result.views:
        by_member.setdefault(v.member, []).append(v)
    ok = [m for m in result.members if m.included and m.name in by_member]
    failed = [m for m in result.members if m not in ok]
    status = SUCCEEDED if not failed else (PARTIALLY_SUCCEEDED if ok else FAILED)
    groups = []
    for members, concept in ((ok, SUCCESSFUL_DETECTIONS), (failed, FAILED_DETECTIONS)):
        if not members:
            continue
        items = []
        for m in members:
            refs = [_by_reference(_R.INFERRED_FROM, library.path(uid))
                    for uid in dict.fromkeys(v.sop_instance_uid
                                             for v in by_member.get(m.name, ()))]
            items.append(_code(DETECTION_PERFORMED, SELECTED_REGION, _R.CONTAINS, [
                *_algorithm(m.name[:64], m.version[:64],
                            _member_parameters(m, result.verified, result.breasts)),
                *refs,
            ]))
        groups.append(_container(concept, _R.INFERRED_FROM, items))
    return _code(SUMMARY_OF_DETECTIONS, status, _R.CONTAINS, groups)


def _analyses(result: ExamResult, library: _Library) -> Dataset:
    params = [f"TTA samples {result.tta_samples}",
              f"TTA seed {result.tta_seed if result.tta_seed is not None else 'none'}"]
    coverage = coverage_text(result)
    if coverage:
        params.insert(0, coverage[:1024])
    if not result.verified:
        params.insert(0, UNCALIBRATED)
    analysis = _code(ANALYSIS_PERFORMED, INDIVIDUAL_ANALYSIS, _R.CONTAINS, [
        *_algorithm(ENSEMBLE_NAME, result.model_set_version[:64], params),
        *(_by_reference(_R.INFERRED_FROM, library.path(uid))
          for uid in dict.fromkeys(v.sop_instance_uid for v in result.views)),
    ])
    return _code(SUMMARY_OF_ANALYSES, SUCCEEDED, _R.CONTAINS, [
        _container(SUCCESSFUL_ANALYSES, _R.INFERRED_FROM, [analysis]),
    ])


def build_mammo_cad_sr(
    result: ExamResult,
    sources: Sequence[Dataset],
    settings: Settings,
    *,
    predecessor: DocumentReference | None = None,
) -> Dataset:
    """The Mammography CAD SR of ``result`` (findings >= the certainty threshold only).

    Building is always possible; sending is for the caller to decide (``cad_sr_allowed``).
    """
    ordered = scored_sources(result, sources)
    root = settings.uid_root
    sop_uid = instance_uid(root, result, OutputKind.SR_MAMMO_CAD)
    findings = cad_findings(result, settings.cad_certainty_threshold)
    library = _Library(ordered, findings)
    all_ok = all(m.included for m in result.members)
    summary_value = (ALL_WITH if findings else ALL_WITHOUT) if all_ok else (
        SOME_WITH if findings else SOME_WITHOUT)

    summary = _code(PROCESSING_SUMMARY, summary_value, _R.CONTAINS,
                    _impressions(findings, library, result))
    language = hd.sr.LanguageOfContentItemAndDescendants(
        hd.sr.CodedConcept("en-US", "RFC5646", "English (United States)"))
    content = [
        *(_plain(item) for item in language),
        library.container(),
        summary,
        _detections(result, library),
        _analyses(result, library),
    ]

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(MAMMOGRAPHY_CAD_SR)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    copy_patient_and_study(ds, ordered[0])
    # SOP Common
    ds.SOPClassUID = MAMMOGRAPHY_CAD_SR
    ds.SOPInstanceUID = sop_uid
    ds.ContributingEquipmentSequence = [
        contributing_equipment_item(result, settings.institution_name)]
    # SR Document Series
    ds.Modality = "SR"
    ds.SeriesInstanceUID = series_uid(root, result, OutputKind.SR_MAMMO_CAD)
    ds.SeriesNumber = SERIES_NUMBER
    ds.SeriesDescription = (
        f"{UNCALIBRATED} - Mammography CAD SR" if not result.verified else SERIES_DESCRIPTION
    )[:64]
    ds.ReferencedPerformedProcedureStepSequence = []
    # General Equipment
    set_equipment(ds, result, settings.institution_name)
    # SR Document General
    ds.InstanceNumber = 1
    ds.CompletionFlag = "PARTIAL" if result.partial else "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    ds.PreliminaryFlag = "FINAL"
    stamp_times(ds, ordered[0])
    ds.PerformedProcedureCodeSequence = []
    ds.CurrentRequestedProcedureEvidenceSequence = evidence_items(ordered)
    if predecessor is not None:
        ds.PredecessorDocumentsSequence = predecessor_items(predecessor)
    # SR Document Content (root container)
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = [MAMMOGRAPHY_CAD_REPORT]
    ds.ContinuityOfContent = "SEPARATE"
    template = Dataset()
    template.MappingResource = "DCMR"
    template.TemplateIdentifier = "4000"
    ds.ContentTemplateSequence = [template]
    ds.ContentSequence = content
    logger.info(
        "built Mammography CAD SR",
        extra={"study_instance_uid": result.study_instance_uid, "sop_uid": sop_uid,
               "findings": len(findings), "verified": result.verified},
    )
    return ds
