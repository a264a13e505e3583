"""Mammography CAD SR (TID 4000): findings above the threshold only, summaries, references."""

from __future__ import annotations

import io

import pydicom
import pytest
from pydicom.dataset import Dataset

from tests.result_builders import build_exam_fixture, with_failed_member
from triage.config import load_settings
from triage.outputs import (
    DocumentReference,
    build_mammo_cad_sr,
    cad_findings,
    cad_sr_allowed,
)
from triage.outputs.common import UNCALIBRATED
from triage.outputs.sr_mammo_cad import MAMMOGRAPHY_CAD_SR
from triage.results import ExamResult
from triage.vocabulary import Laterality


def _roundtrip(ds: Dataset) -> Dataset:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return pydicom.dcmread(buffer)


def _code(item: Dataset) -> str:
    """Concept name code value; "" for items without one (IMAGE, by-reference)."""
    names = item.get("ConceptNameCodeSequence")
    return str(names[0].CodeValue) if names else ""


def _value(item: Dataset) -> str:
    return str(item.ConceptCodeSequence[0].CodeValue)


def _walk(items: object) -> list[Dataset]:
    out: list[Dataset] = []
    for item in items:  # type: ignore[attr-defined]
        out.append(item)
        out.extend(_walk(item.get("ContentSequence", [])))
    return out


def _resolve(ds: Dataset, path: list[int]) -> Dataset:
    assert path[0] == 1
    node: Dataset = ds
    for index in path[1:]:
        node = node.ContentSequence[index - 1]
    return node


def _view_probability(result: ExamResult, uid: str) -> float:
    views = [v for v in result.views if v.sop_instance_uid == uid]
    weights = {m.name: m.ensemble_weight for m in result.members}
    total = sum(weights[v.member] for v in views)
    return sum(weights[v.member] * v.p_malignant for v in views) / total


def test_findings_only_for_views_at_or_above_the_threshold() -> None:
    fx = build_exam_fixture(
        verified=True, p_malignant={Laterality.LEFT: 0.8, Laterality.RIGHT: 0.1})
    probabilities = {uid: _view_probability(fx.result, uid)
                     for uid in fx.result.scored_sop_instance_uids}
    threshold = 0.5
    expected = {uid for uid, p in probabilities.items() if p >= threshold}
    assert 0 < len(expected) < len(probabilities)  # the fixture straddles the threshold

    sr = _roundtrip(build_mammo_cad_sr(
        fx.result, fx.sources, load_settings(cad_certainty_threshold=threshold)))
    findings = [i for i in _walk(sr.ContentSequence) if _code(i) == "111059"]
    assert len(findings) == len(expected)
    seen = set()
    for finding in findings:
        certainty = next(c for c in finding.ContentSequence if _code(c) == "111012")
        assert certainty.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue == "%"
        center = next(c for c in finding.ContentSequence if _code(c) == "111010")
        image = _resolve(sr, list(center.ContentSequence[0].ReferencedContentItemIdentifier))
        uid = str(image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        seen.add(uid)
        value = float(certainty.MeasuredValueSequence[0].NumericValue)
        assert value == pytest.approx(100 * probabilities[uid], abs=1e-3)
        assert value >= 100 * threshold
        # the Center marks the lesion the fixture planted in that image
        col, row = (float(v) for v in center.GraphicData)
        lesion_row, lesion_col = fx.lesions[uid]
        assert abs(row - 0.5 - lesion_row) <= 8 and abs(col - 0.5 - lesion_col) <= 8
    assert seen == expected

    summary = next(i for i in sr.ContentSequence if _code(i) == "111017")
    assert _value(summary) == "111242"  # all algorithms succeeded; with findings


def test_no_findings_when_nothing_reaches_the_threshold() -> None:
    fx = build_exam_fixture(verified=True)
    top = max(_view_probability(fx.result, uid) for uid in fx.result.scored_sop_instance_uids)
    settings = load_settings(cad_certainty_threshold=min(1.0, top + 0.01))
    assert cad_findings(fx.result, settings.cad_certainty_threshold) == []
    sr = build_mammo_cad_sr(fx.result, fx.sources, settings)
    assert not any(_code(i) == "111059" for i in _walk(sr.ContentSequence))
    summary = next(i for i in sr.ContentSequence if _code(i) == "111017")
    assert _value(summary) == "111241"  # all algorithms succeeded; without findings


def test_document_structure_names_algorithms_and_references_every_source() -> None:
    fx = build_exam_fixture(verified=True, with_dbt=True)
    sr = _roundtrip(build_mammo_cad_sr(fx.result, fx.sources, load_settings()))
    assert sr.SOPClassUID == MAMMOGRAPHY_CAD_SR
    assert _code(sr) == "111036"
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "4000"
    library = next(i for i in sr.ContentSequence if _code(i) == "111028")
    in_library = {str(i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
                  for i in library.ContentSequence}
    assert in_library == set(fx.result.scored_sop_instance_uids)
    detections = next(i for i in sr.ContentSequence if _code(i) == "111064")
    assert _value(detections) == "111222"  # succeeded
    performed = [i for i in _walk(detections.ContentSequence) if _code(i) == "111022"]
    names = set()
    for item in performed:
        texts = {_code(c): str(c.TextValue) for c in item.ContentSequence
                 if c.get("ValueType") == "TEXT"}
        names.add((texts["111001"], texts["111003"]))
        for ref in (c for c in item.ContentSequence if "ReferencedContentItemIdentifier" in c):
            assert _resolve(sr, list(ref.ReferencedContentItemIdentifier)).ValueType == "IMAGE"
    assert names == {(m.name, m.version) for m in fx.result.members}
    analyses = next(i for i in sr.ContentSequence if _code(i) == "111065")
    assert _value(analyses) == "111222"
    evidence = {ref.ReferencedSOPInstanceUID
                for study in sr.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence
                for ref in series.ReferencedSOPSequence}
    assert evidence == set(fx.result.scored_sop_instance_uids)


@pytest.mark.parametrize("charset", ["latin1", "japanese"])
def test_cad_sr_copies_patient_study_and_character_set(charset: str) -> None:
    fx = build_exam_fixture(charset=charset)
    source = _roundtrip(fx.sources[0])
    sr = _roundtrip(build_mammo_cad_sr(fx.result, fx.sources, load_settings()))
    assert sr.SpecificCharacterSet == source.SpecificCharacterSet
    for keyword in ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate",
                    "PatientSex", "StudyInstanceUID", "StudyDate", "StudyTime",
                    "AccessionNumber", "ReferringPhysicianName", "StudyID",
                    "StudyDescription"):
        assert str(sr[keyword].value) == str(source[keyword].value), keyword
    assert sr.SeriesInstanceUID not in {s.SeriesInstanceUID for s in fx.sources}


def test_cad_sr_is_sent_only_for_verified_runs_unless_the_operator_allows_it() -> None:
    verified = build_exam_fixture(verified=True).result
    unverified = build_exam_fixture(verified=False).result
    assert cad_sr_allowed(verified, load_settings())
    assert not cad_sr_allowed(unverified, load_settings())
    assert cad_sr_allowed(unverified, load_settings(send_unverified_cad=True))


def test_unverified_cad_sr_says_uncalibrated_and_names_its_predecessor() -> None:
    fx = build_exam_fixture(verified=False)
    settings = load_settings()
    old = build_mammo_cad_sr(fx.result, fx.sources, settings)
    again = build_exam_fixture(verified=False, extra_instance=True)
    new = _roundtrip(build_mammo_cad_sr(again.result, again.sources, settings,
                                        predecessor=DocumentReference.from_dataset(old)))
    texts = [str(i.TextValue) for i in _walk(new.ContentSequence) if i.get("ValueType") == "TEXT"]
    assert UNCALIBRATED in texts
    assert UNCALIBRATED in str(new.SeriesDescription)
    ref = new.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert ref.ReferencedSOPInstanceUID == old.SOPInstanceUID
    assert new.SOPInstanceUID != old.SOPInstanceUID


def test_failed_member_is_reported_as_a_failed_detection() -> None:
    fx = with_failed_member(build_exam_fixture(verified=True))
    failed = fx.result.members[-1]
    assert fx.result.verified  # an excluded member does not count against verification
    sr = build_mammo_cad_sr(fx.result, fx.sources, load_settings(cad_certainty_threshold=0.5))
    summary = next(i for i in sr.ContentSequence if _code(i) == "111017")
    assert _value(summary) == "111244"  # not all algorithms succeeded; with findings
    detections = next(i for i in sr.ContentSequence if _code(i) == "111064")
    assert _value(detections) == "111223"  # partially succeeded
    failed_container = next(i for i in detections.ContentSequence if _code(i) == "111025")
    names = [str(c.TextValue) for c in _walk(failed_container.ContentSequence)
             if _code(c) == "111001"]
    assert names == [failed.name]
    assert sr.CompletionFlag == "PARTIAL"
