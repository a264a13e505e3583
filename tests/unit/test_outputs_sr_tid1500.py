"""TID 1500 SR: read back with highdicom, per-breast probabilities, identity, references."""

from __future__ import annotations

import io
from functools import cache

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from tests.result_builders import ExamFixture, build_exam_fixture, with_failed_member
from triage.config import load_settings
from triage.errors import InvalidDicom
from triage.outputs import DocumentReference, build_tid1500_sr
from triage.outputs.common import (
    INVESTIGATIONAL_NOTE,
    MANUFACTURER,
    UNCALIBRATED,
    saliency_peak,
)
from triage.outputs.sr_tid1500 import ENSEMBLE_NAME
from triage.vocabulary import NOT_TRIAGED, Laterality

BREAST_SITE = {Laterality.LEFT: codes.SCT.LeftBreast, Laterality.RIGHT: codes.SCT.RightBreast}


def _roundtrip(ds: Dataset) -> Dataset:
    """Encode as a file would be (character set applied) and read back."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return pydicom.dcmread(buffer)


@cache
def _built(**kwargs: object) -> tuple[ExamFixture, Dataset]:
    """One fixture and its SR (encoded and read back) per configuration, shared by tests."""
    fx = build_exam_fixture(**kwargs)  # type: ignore[arg-type]
    return fx, _roundtrip(build_tid1500_sr(fx.result, fx.sources, load_settings()))


def _algorithm_name(item: Dataset) -> str | None:
    for child in item.get("ContentSequence", []):
        if child.ConceptNameCodeSequence[0].CodeValue == "111001":
            return str(child.TextValue)
    return None


def _texts(ds: Dataset) -> list[str]:
    found: list[str] = []

    def walk(items: object) -> None:
        for item in items:  # type: ignore[attr-defined]
            if item.get("ValueType") == "TEXT":
                found.append(str(item.TextValue))
            walk(item.get("ContentSequence", []))

    walk(ds.ContentSequence)
    return found


def test_sr_read_back_with_highdicom_gives_the_per_breast_probabilities() -> None:
    fx, sr = _built(charset="latin1", verified=True)
    report = hd.sr.Comprehensive3DSR.from_dataset(sr)
    for breast in fx.result.breasts:
        for finding, concept, expected in (
            (codes.SCT.Malignant, codes.DCM.ProbabilityOfCancer, breast.p_malignant),
            (codes.SCT.Benign, codes.DCM.Probability, breast.p_benign),
        ):
            groups = report.content.get_image_measurement_groups(
                finding_type=finding, finding_site=BREAST_SITE[breast.laterality])
            assert len(groups) == 1
            measurements = groups[0].get_measurements(name=concept)
            ensemble = [m for m in measurements if _algorithm_name(m[0]) == ENSEMBLE_NAME]
            assert len(ensemble) == 1
            assert ensemble[0].value == pytest.approx(expected)
            assert ensemble[0].unit == hd.sr.CodedConcept("1", "UCUM", "no units")
            per_member = {_algorithm_name(m[0]): m.value for m in measurements
                          if _algorithm_name(m[0]) != ENSEMBLE_NAME}
            index = 1 if finding == codes.SCT.Malignant else 0
            assert per_member == pytest.approx(
                {name: pair[index] for name, pair in breast.per_member.items()})


def test_exam_score_and_member_identity_are_recorded() -> None:
    fx, sr = _built(charset="latin1", verified=True)
    report = hd.sr.Comprehensive3DSR.from_dataset(sr)
    groups = report.content.get_image_measurement_groups()
    scores = [m for g in groups for m in g.get_measurements(name=codes.SCT.Score)]
    assert [m.value for m in scores] == pytest.approx([fx.result.exam_score])
    texts = _texts(sr)
    for member in fx.result.members:
        assert member.name in texts and member.version in texts
        assert f"weights sha256 {member.weights_sha256}" in texts
        assert f"weights status {member.weights_status.value}" in texts
    assert f"TTA samples {fx.result.tta_samples}" in texts
    assert f"TTA seed {fx.result.tta_seed}" in texts
    assert fx.result.category in texts and INVESTIGATIONAL_NOTE in texts
    assert not any(UNCALIBRATED in t for t in texts)
    assert NOT_TRIAGED not in texts


def test_unverified_run_says_uncalibrated_and_not_triaged() -> None:
    fx, sr = _built(charset="latin1", verified=False)
    texts = _texts(sr)
    assert any(t.startswith(UNCALIBRATED) for t in texts)
    assert NOT_TRIAGED in texts
    assert fx.result.not_triaged_reason in texts
    assert UNCALIBRATED in str(sr.SeriesDescription)


@pytest.mark.parametrize("charset", ["latin1", "japanese"])
def test_patient_and_study_attributes_and_character_set_are_copied(charset: str) -> None:
    fx, sr = _built(charset=charset, verified=charset == "latin1")
    source = _roundtrip(fx.sources[0])
    assert sr.SpecificCharacterSet == source.SpecificCharacterSet
    for keyword in ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate",
                    "PatientSex", "StudyInstanceUID", "StudyDate", "StudyTime",
                    "AccessionNumber", "ReferringPhysicianName", "StudyID",
                    "StudyDescription", "TimezoneOffsetFromUTC"):
        assert str(sr[keyword].value) == str(source[keyword].value), keyword
    assert str(sr.PatientName) == str(fx.sources[0].PatientName)
    assert not str(sr.PatientName).isascii()


def test_sr_is_a_new_series_in_the_study_naming_us() -> None:
    fx, sr = _built(charset="latin1", verified=True)
    assert sr.StudyInstanceUID == fx.sources[0].StudyInstanceUID
    assert sr.SeriesInstanceUID not in {s.SeriesInstanceUID for s in fx.sources}
    assert sr.Manufacturer == MANUFACTURER
    assert fx.result.model_set_version in sr.SoftwareVersions
    ours = [e for e in sr.ContributingEquipmentSequence if e.Manufacturer == MANUFACTURER]
    assert len(ours) == 1
    purpose = ours[0].PurposeOfReferenceCodeSequence[0]
    assert (purpose.CodeValue, purpose.CodingSchemeDesignator) == ("109102", "DCM")
    assert fx.result.model_set_version in ours[0].SoftwareVersions
    referenced = {ref.ReferencedSOPInstanceUID
                  for study in sr.CurrentRequestedProcedureEvidenceSequence
                  for series in study.ReferencedSeriesSequence
                  for ref in series.ReferencedSOPSequence}
    assert referenced == set(fx.result.scored_sop_instance_uids)


def test_rescore_names_the_sr_it_replaces() -> None:
    _, old = _built(charset="latin1", verified=True)
    again = build_exam_fixture(verified=True, extra_instance=True)
    new = _roundtrip(build_tid1500_sr(again.result, again.sources, load_settings(),
                                      predecessor=DocumentReference.from_dataset(old)))
    assert new.SOPInstanceUID != old.SOPInstanceUID
    (study,) = new.PredecessorDocumentsSequence
    (series,) = study.ReferencedSeriesSequence
    (ref,) = series.ReferencedSOPSequence
    assert (study.StudyInstanceUID, series.SeriesInstanceUID) == (
        old.StudyInstanceUID, old.SeriesInstanceUID)
    assert (ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID) == (
        old.SOPClassUID, old.SOPInstanceUID)
    assert "PredecessorDocumentsSequence" not in old


def test_regions_are_on_the_source_image_with_dbt_frame_numbers() -> None:
    fx, sr = _built(with_dbt=True, charset="japanese", verified=False)
    report = hd.sr.Comprehensive3DSR.from_dataset(sr)
    groups = report.content.get_planar_roi_measurement_groups(finding_type=codes.SCT.Malignant)
    by_source: dict[str, list[tuple[np.ndarray, list[int] | None]]] = {}
    for g in groups:
        region = g.roi
        image = region.ContentSequence[0]
        ref = image.ReferencedSOPSequence[0]
        frames = ref.get("ReferencedFrameNumber")
        by_source.setdefault(ref.ReferencedSOPInstanceUID, []).append(
            (region.value, None if frames is None else [int(f) for f in np.atleast_1d(frames)]))
    for view in fx.result.views:
        peak = saliency_peak(view, view.saliency_malignant)
        points = [p for p, _ in by_source[view.sop_instance_uid]]
        assert any(np.allclose(p, [[peak.source_col + 0.5, peak.source_row + 0.5]])
                   for p in points)
        # the peak lies on the lesion the builder planted in that source image
        row, col = fx.lesions[view.sop_instance_uid]
        assert abs(peak.source_row - row) <= 8 and abs(peak.source_col - col) <= 8
        frames = {tuple(f) if f else None for _, f in by_source[view.sop_instance_uid]}
        expected = {(view.saliency_slice + 1,)} if view.saliency_slice is not None else {None}
        assert frames == expected
    rois = report.content.get_planar_roi_measurement_groups(
        finding_type=codes.DCM.SelectedRegion)
    assert len(rois) == sum(len(v.rois) for v in fx.result.views)


def test_missing_source_instance_is_an_actionable_error() -> None:
    fx = build_exam_fixture()
    with pytest.raises(InvalidDicom, match="not among the source datasets"):
        build_tid1500_sr(fx.result, fx.sources[1:], load_settings())
    other = build_exam_fixture(seed=99)
    with pytest.raises(InvalidDicom, match="belongs to study"):
        build_tid1500_sr(fx.result, [*fx.sources, other.sources[0]], load_settings())


def test_excluded_member_and_partial_result_are_stated() -> None:
    fx = with_failed_member(build_exam_fixture(verified=True))
    failed = fx.result.members[-1]
    sr = _roundtrip(build_tid1500_sr(fx.result, fx.sources, load_settings()))
    texts = _texts(sr)
    assert any(failed.name in t and str(failed.failure_reason) in t for t in texts)
    assert sr.CompletionFlag == "PARTIAL"
