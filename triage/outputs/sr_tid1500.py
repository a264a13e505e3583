"""TID 1500 Comprehensive 3D SR of one scoring run (IHE AI Results style), via highdicom.

Content tree (root: (126000, DCM, "Imaging Measurement Report")):

* Language (en-US), device observer (the algorithm: Device Observer UID from the UID
  policy, name/manufacturer/model "triage"), Procedure Reported (SCT 71651007 Mammography);
* Image Library (TID 1600) with every scored source image: laterality, view,
  patient orientation, pixel spacing where the source has them;
* Imaging Measurements, TID 1501/1410 measurement groups:
  - "exam": (246262008, SCT, "Score") = exam score, unit (1, UCUM, "no units"), algorithm
    identification of the ensemble (TID 4019: Algorithm Name "triage ensemble", Algorithm
    Version = model-set version, Algorithm Parameters: members, TTA samples and seed);
  - per breast and class: finding site (80248007, SCT, "Left breast") /
    (73056007, SCT, "Right breast"), Finding (21594007, SCT, "Malignant") with
    (111047, DCM, "Probability of cancer"), or Finding (30807003, SCT, "Benign") with
    (122157, DCM, "Probability"); unit (1, UCUM, "no units"), i.e. a fraction in [0, 1].
    One measurement for the ensemble plus one per member; each carries TID 4019 algorithm
    identification (member name, version; parameters: weights sha256, weights status,
    ensemble weight);
  - per scored view and member: each ROI patch as a closed POLYLINE on the SOURCE image
    (Finding (111099, DCM, "Selected region"), measurement "ROI attention weight" from our
    private scheme 99TRIAGE), and the malignant / benign saliency peaks as POINTs
    ((130404, DCM, "Saliency")). DBT regions carry Referenced Frame Number = slice + 1.
    A member without ROIs or saliency (DMV-CNN image-only) has no region groups: it is
    listed by its per-breast measurements above;
* Qualitative Evaluations container with TEXT items: worklist category (or NOT TRIAGED
  and the reason), the investigational notice, "UNCALIBRATED / INVESTIGATIONAL" first
  when the run is not verified, excluded members, and notes.

No standard concept exists for "ROI attention weight", "worklist triage category" or
"reason not triaged"; those use the private coding scheme 99TRIAGE (PS3.16 8.2: a
designator starting with "99"), declared in the Coding Scheme Identification Sequence.
The benign probability uses the generic (122157, DCM, "Probability") qualified by its
group's Finding "Benign", since DICOM has no "probability of benign finding" concept.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from triage.config import Settings
from triage.outputs.common import (
    INVESTIGATIONAL_NOTE,
    MANUFACTURER,
    MODEL_NAME,
    UNCALIBRATED,
    UNCALIBRATED_NOTE,
    DocumentReference,
    box_polyline,
    breast_code,
    contributing_equipment,
    copy_patient_and_study,
    coverage_text,
    effective_category,
    image_descriptors,
    is_multiframe,
    predecessor_items,
    roi_source_box,
    saliency_peak,
    scored_sources,
    set_equipment,
    stamp_times,
    views_by_source,
)
from triage.outputs.uids import instance_uid, observer_uid, series_uid, uid_from_key
from triage.results import ExamResult, MemberInfo, ViewScore
from triage.vocabulary import Laterality, OutputKind

logger = logging.getLogger(__name__)

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
SERIES_NUMBER = 9901
SERIES_DESCRIPTION = "AI triage SR (TID 1500) - investigational, not for diagnosis"

PRIVATE_SCHEME = "99TRIAGE"
TRIAGE_CATEGORY = hd.sr.CodedConcept("category", PRIVATE_SCHEME, "Worklist triage category")
NOT_TRIAGED_REASON = hd.sr.CodedConcept(
    "not-triaged-reason", PRIVATE_SCHEME, "Reason not triaged"
)
ROI_ATTENTION = hd.sr.CodedConcept("roi-attention", PRIVATE_SCHEME, "ROI attention weight")
ENSEMBLE_NAME = "triage ensemble"

UNIT_FRACTION = hd.sr.CodedConcept.from_code(codes.UCUM.NoUnits)  # (1, UCUM, "no units")
EXAM_SCORE = hd.sr.CodedConcept.from_code(codes.SCT.Score)  # (246262008, SCT)
P_CANCER = hd.sr.CodedConcept.from_code(codes.DCM.ProbabilityOfCancer)  # (111047, DCM)
P_GENERIC = hd.sr.CodedConcept.from_code(codes.DCM.Probability)  # (122157, DCM)
MALIGNANT = hd.sr.CodedConcept.from_code(codes.SCT.Malignant)  # (21594007, SCT)
BENIGN = hd.sr.CodedConcept.from_code(codes.SCT.Benign)  # (30807003, SCT)
SALIENCY = hd.sr.CodedConcept.from_code(codes.DCM.Saliency)  # (130404, DCM)
SELECTED_REGION = hd.sr.CodedConcept.from_code(codes.DCM.SelectedRegion)  # (111099, DCM)
COMMENT = hd.sr.CodedConcept.from_code(codes.DCM.Comment)  # (121106, DCM)
QUALITATIVE_EVALUATIONS = hd.sr.CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")


def coding_scheme_item() -> hd.coding_schemes.CodingSchemeIdentificationItem:
    return hd.coding_schemes.CodingSchemeIdentificationItem(
        designator=PRIVATE_SCHEME,
        name="triage product concepts",
        responsible_organization=MANUFACTURER,
    )


def _ensemble_id(result: ExamResult) -> hd.sr.AlgorithmIdentification:
    params = [f"member {m.name} {m.version} weight {m.ensemble_weight:g}"
              for m in result.members if m.included]
    params.append(f"TTA samples {result.tta_samples}")
    params.append(f"TTA seed {result.tta_seed if result.tta_seed is not None else 'none'}")
    return hd.sr.AlgorithmIdentification(
        name=ENSEMBLE_NAME, version=result.model_set_version[:64], parameters=params,
        manufacturer=MANUFACTURER,
    )


def _member_id(member: MemberInfo) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(
        name=member.name[:64],
        version=member.version[:64],
        parameters=[
            f"architecture {member.architecture}",
            f"weights sha256 {member.weights_sha256 or 'none'}",
            f"weights status {member.weights_status.value}",
            f"ensemble weight {member.ensemble_weight:g}",
        ],
        manufacturer=MANUFACTURER,
    )


class _Tracker:
    """Deterministic tracking identifiers (UIDs under our root) for measurement groups."""

    def __init__(self, root: str, sr_uid: str) -> None:
        self._root = root
        self._sr_uid = sr_uid

    def __call__(self, label: str) -> hd.sr.TrackingIdentifier:
        return hd.sr.TrackingIdentifier(
            uid=uid_from_key(self._root, "tracking", self._sr_uid, label),
            identifier=label[:64],
        )


def _source_images(views: Sequence[ViewScore]) -> list[hd.sr.SourceImageForMeasurementGroup]:
    seen: dict[str, hd.sr.SourceImageForMeasurementGroup] = {}
    for v in views:
        if v.sop_instance_uid not in seen:
            seen[v.sop_instance_uid] = hd.sr.SourceImageForMeasurementGroup(
                referenced_sop_class_uid=v.sop_class_uid,
                referenced_sop_instance_uid=v.sop_instance_uid,
            )
    return list(seen.values())


def _breast_groups(
    result: ExamResult, track: _Tracker, members: dict[str, MemberInfo]
) -> list[hd.sr.MeasurementsAndQualitativeEvaluations]:
    groups = []
    ensemble = _ensemble_id(result)
    for breast in result.breasts:
        site = hd.sr.FindingSite(anatomic_location=breast_code(breast.laterality))
        side = "left" if breast.laterality is Laterality.LEFT else "right"
        views = [v for v in result.views if v.laterality is breast.laterality]
        for finding, concept, value, index in (
            (MALIGNANT, P_CANCER, breast.p_malignant, 1),
            (BENIGN, P_GENERIC, breast.p_benign, 0),
        ):
            if value is None:  # no member estimates it (e.g. all-convolutional members only)
                continue
            measurements = [hd.sr.Measurement(
                name=concept, value=float(value), unit=UNIT_FRACTION, algorithm_id=ensemble,
            )]
            for name, pair in breast.per_member.items():
                if name in members and pair[index] is not None:
                    measurements.append(hd.sr.Measurement(
                        name=concept, value=float(pair[index] or 0.0), unit=UNIT_FRACTION,
                        algorithm_id=_member_id(members[name]),
                    ))
            groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=track(f"{side} breast {finding.meaning.lower()}"),
                finding_type=finding,
                finding_sites=[site],
                algorithm_id=ensemble,
                measurements=measurements,
                source_images=_source_images(views) or None,
            ))
    return groups


def _region(view: ViewScore, graphic_type: str, data: object, frame: int | None,
            multiframe: bool) -> hd.sr.ImageRegion:
    return hd.sr.ImageRegion(
        graphic_type=graphic_type,
        graphic_data=data,  # type: ignore[arg-type]
        source_image=hd.sr.SourceImageForRegion(
            referenced_sop_class_uid=view.sop_class_uid,
            referenced_sop_instance_uid=view.sop_instance_uid,
            referenced_frame_numbers=[frame] if (multiframe and frame) else None,
        ),
    )


def _view_groups(
    result: ExamResult, sources: dict[str, Dataset], track: _Tracker,
    members: dict[str, MemberInfo],
) -> list[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations]:
    groups = []
    for uid, views in views_by_source(result).items():
        multiframe = is_multiframe(sources[uid])
        for view in views:
            member = members.get(view.member)
            algo = _member_id(member) if member else None
            label = f"{view.laterality.value}{view.view.value} {view.member}"
            site = hd.sr.FindingSite(anatomic_location=breast_code(view.laterality))
            for k, roi in enumerate(view.rois, start=1):
                frame = (roi.frame + 1) if roi.frame is not None else (
                    view.saliency_slice + 1 if view.saliency_slice is not None else None)
                groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                    tracking_identifier=track(f"{label} roi {k} {uid}"),
                    referenced_region=_region(
                        view, "POLYLINE", box_polyline(roi_source_box(view, roi)), frame,
                        multiframe),
                    finding_type=SELECTED_REGION,
                    finding_sites=[site],
                    algorithm_id=algo,
                    measurements=[hd.sr.Measurement(
                        name=ROI_ATTENTION, value=float(roi.attention), unit=UNIT_FRACTION,
                    )],
                ))
            frame = view.saliency_slice + 1 if view.saliency_slice is not None else None
            for finding, saliency in ((MALIGNANT, view.saliency_malignant),
                                      (BENIGN, view.saliency_benign)):
                if saliency is None:  # a member without saliency (DMV-CNN image-only)
                    continue
                peak = saliency_peak(view, saliency)
                groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                    tracking_identifier=track(
                        f"{label} {finding.meaning.lower()} saliency peak {uid}"),
                    referenced_region=_region(view, "POINT", peak.point(), frame, multiframe),
                    finding_type=finding,
                    finding_sites=[site],
                    algorithm_id=algo,
                    measurements=[hd.sr.Measurement(
                        name=SALIENCY, value=peak.value, unit=UNIT_FRACTION,
                    )],
                ))
    return groups


def _text(name: hd.sr.CodedConcept, value: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(
        name=name, value=value[:1024] or "-",
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )


def _qualitative_evaluations(result: ExamResult) -> hd.sr.ContainerContentItem:
    container = hd.sr.ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    items = []
    if not result.verified:
        items.append(_text(COMMENT, UNCALIBRATED_NOTE))
    category, reason = effective_category(result)
    items.append(_text(TRIAGE_CATEGORY, category))
    if reason:
        items.append(_text(NOT_TRIAGED_REASON, reason))
    items.append(_text(COMMENT, INVESTIGATIONAL_NOTE))
    for m in result.members:
        if not m.included:
            items.append(_text(COMMENT, f"member {m.name} {m.version} excluded: "
                                        f"{m.failure_reason or 'failed'}"))
    coverage = coverage_text(result)
    if coverage:
        items.append(_text(COMMENT, coverage))
    for note in result.notes:
        items.append(_text(COMMENT, note))
    container.ContentSequence = hd.sr.ContentSequence(items)
    return container


def _image_library(sources: Sequence[Dataset]) -> hd.sr.ContainerContentItem:
    """TID 1600 Image Library that tolerates sources without orientation/spacing."""
    library = hd.sr.ContainerContentItem(
        name=codes.DCM.ImageLibrary, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    group = hd.sr.ContainerContentItem(
        name=codes.DCM.ImageLibraryGroup,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    entries = []
    for ds in sources:
        item = hd.sr.ImageContentItem(
            name=hd.sr.CodedConcept("260753009", "SCT", "Source"),
            referenced_sop_class_uid=ds.SOPClassUID,
            referenced_sop_instance_uid=ds.SOPInstanceUID,
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
        item.ContentSequence = hd.sr.ContentSequence(image_descriptors(ds))
        entries.append(item)
    group.ContentSequence = hd.sr.ContentSequence(entries)
    library.ContentSequence = hd.sr.ContentSequence([group])
    return library


def build_tid1500_sr(
    result: ExamResult,
    sources: Sequence[Dataset],
    settings: Settings,
    *,
    predecessor: DocumentReference | None = None,
) -> hd.sr.Comprehensive3DSR:
    """The TID 1500 SR of ``result`` in the source study, in a new series.

    ``sources`` are the scored instances (any order, headers suffice); ``predecessor``
    names the SR this one replaces (a re-score after new images).
    """
    ordered = scored_sources(result, sources)
    by_uid = {str(ds.SOPInstanceUID): ds for ds in ordered}
    root = settings.uid_root
    sop_uid = instance_uid(root, result, OutputKind.SR_TID1500)
    members = {m.name: m for m in result.members}
    track = _Tracker(root, sop_uid)

    observer = hd.sr.ObserverContext(
        observer_type=codes.cid270.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=observer_uid(root, result.model_set_version),
            name=ENSEMBLE_NAME,
            manufacturer_name=MANUFACTURER,
            model_name=MODEL_NAME,
        ),
    )
    exam_group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=track("exam"),
        algorithm_id=_ensemble_id(result),
        measurements=[hd.sr.Measurement(
            name=EXAM_SCORE, value=float(result.exam_score), unit=UNIT_FRACTION,
            algorithm_id=_ensemble_id(result),
        )],
        source_images=_source_images(result.views),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.SCT.Mammography,
        imaging_measurements=[
            exam_group,
            *_breast_groups(result, track, members),
            *_view_groups(result, by_uid, track, members),
        ],
    )
    root_item = report[0]
    content = root_item.ContentSequence
    # Image Library goes before Imaging Measurements (TID 1500 row order).
    content.insert(len(content) - 1, _image_library(ordered))
    content.append(_qualitative_evaluations(result))

    description = SERIES_DESCRIPTION
    if not result.verified:
        description = f"{UNCALIBRATED} AI triage SR, not for diagnosis"
    sr = hd.sr.Comprehensive3DSR(
        evidence=ordered,
        content=report,
        series_instance_uid=series_uid(root, result, OutputKind.SR_TID1500),
        series_number=SERIES_NUMBER,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=not result.partial,
        is_final=True,
        institution_name=settings.institution_name or None,
        series_description=description,
        manufacturer_model_name=MODEL_NAME,
        coding_schemes=[coding_scheme_item()],
        # copied below: highdicom rejects the valid empty first value of e.g.
        # "\ISO 2022 IR 87" (default repertoire for value 1)
        specific_character_set=None,
        contributing_equipment=[contributing_equipment(result, settings.institution_name)],
    )
    copy_patient_and_study(sr, ordered[0])
    stamp_times(sr, ordered[0])
    set_equipment(sr, result, settings.institution_name)
    if predecessor is not None:
        sr.PredecessorDocumentsSequence = predecessor_items(predecessor)
    logger.info(
        "built TID 1500 SR",
        extra={"study_instance_uid": result.study_instance_uid, "sop_uid": sop_uid,
               "verified": result.verified},
    )
    return sr
