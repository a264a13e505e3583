"""Outputs of a run with a member that has no saliency maps and no ROIs (DMV-CNN image-only):
the overlay map comes from the other members only, every output still lists the member
with its scores, and nothing points at a location that member never gave."""

from __future__ import annotations

import io

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from tests.result_builders import build_exam_fixture, with_member_without_saliency
from triage.config import load_settings
from triage.outputs import build_mammo_cad_sr, build_tid1500_sr, cad_findings
from triage.outputs.overlay import render_overlay
from triage.outputs.sr_tid1500 import ENSEMBLE_NAME
from triage.vocabulary import Laterality

MEMBER = "dmv-cnn-image-only"
BREAST_SITE = {Laterality.LEFT: codes.SCT.LeftBreast, Laterality.RIGHT: codes.SCT.RightBreast}
CENTER, ALGORITHM_NAME, ALGORITHM_PARAMETERS = "111010", "111001", "111002"


def _roundtrip(ds: Dataset) -> Dataset:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return pydicom.dcmread(buffer)


def _walk(items: object) -> list[Dataset]:
    out: list[Dataset] = []
    for item in items:  # type: ignore[attr-defined]
        out.append(item)
        out.extend(_walk(item.get("ContentSequence", [])))
    return out


def _code(item: Dataset) -> str:
    names = item.get("ConceptNameCodeSequence")
    return str(names[0].CodeValue) if names else ""


def _algorithm_name(item: Dataset) -> str | None:
    for child in item.get("ContentSequence", []):
        if _code(child) == ALGORITHM_NAME:
            return str(child.TextValue)
    return None


def test_member_without_saliency_neither_adds_to_nor_dims_the_overlay_map() -> None:
    base = build_exam_fixture()
    mixed = with_member_without_saliency(base)
    for source in base.sources:
        uid = str(source.SOPInstanceUID)
        before = render_overlay(base.result, source, base.pixels[uid])
        after = render_overlay(mixed.result, source, mixed.pixels[uid])
        # the two map members now weigh 1/3 each instead of 1/2; renormalised over the
        # members that have a map, the picture (maps and ROI boxes) is unchanged
        assert np.array_equal(before.rgb[:before.image_rows], after.rgb[:after.image_rows])


def test_overlay_legend_lists_the_member_with_its_scores_and_says_it_has_no_map() -> None:
    fx = with_member_without_saliency(build_exam_fixture())
    for source in fx.sources:
        uid = str(source.SOPInstanceUID)
        # legend lines are wrapped at spaces to the image width: rejoin them
        text = " ".join(render_overlay(fx.result, source, fx.pixels[uid]).legend)
        for view in (v for v in fx.result.views if v.sop_instance_uid == uid):
            member = next(m for m in fx.result.members if m.name == view.member)
            entry = (f"{member.name} {member.version} ({member.weights_status.value}): "
                     f"p(malignant) {view.p_malignant:.3f} p(benign) {view.p_benign:.3f}")
            assert entry in text
            assert (f"{entry}; no saliency map" in text) is (view.saliency_malignant is None)


def test_overlay_of_members_without_any_map_is_the_plain_image() -> None:
    fx = with_member_without_saliency(build_exam_fixture(), only=True)
    source = fx.sources[0]
    picture = render_overlay(fx.result, source, fx.pixels[str(source.SOPInstanceUID)])
    image = picture.rgb[:picture.image_rows].astype(int)
    assert np.array_equal(image[..., 0], image[..., 1])
    assert np.array_equal(image[..., 1], image[..., 2])


def test_tid1500_lists_the_member_per_breast_and_gives_it_no_regions() -> None:
    fx = with_member_without_saliency(build_exam_fixture())
    sr = _roundtrip(build_tid1500_sr(fx.result, fx.sources, load_settings()))
    report = hd.sr.Comprehensive3DSR.from_dataset(sr)
    for breast in fx.result.breasts:
        for finding, concept, index in ((codes.SCT.Malignant, codes.DCM.ProbabilityOfCancer, 1),
                                        (codes.SCT.Benign, codes.DCM.Probability, 0)):
            group, = report.content.get_image_measurement_groups(
                finding_type=finding, finding_site=BREAST_SITE[breast.laterality])
            values = {_algorithm_name(m[0]): m.value for m in group.get_measurements(name=concept)
                      if _algorithm_name(m[0]) != ENSEMBLE_NAME}
            assert values[MEMBER] == pytest.approx(breast.per_member[MEMBER][index])
    region_owners = {_algorithm_name(item) for item in _walk(sr.ContentSequence)
                     if any(c.get("ValueType") == "SCOORD" for c in item.get("ContentSequence", []))}
    region_owners.discard(None)
    others = {m.name for m in fx.result.members} - {MEMBER}
    assert region_owners == others  # the map members have regions; the new one has none


def test_cad_findings_take_their_location_from_members_with_a_map() -> None:
    base = build_exam_fixture()
    mixed = with_member_without_saliency(base)
    before = {f.sop_instance_uid: f for f in cad_findings(base.result, 0.0)}
    after = {f.sop_instance_uid: f for f in cad_findings(mixed.result, 0.0)}
    assert before.keys() == after.keys()
    for uid, finding in after.items():
        assert finding.center == before[uid].center and finding.outline == before[uid].outline


def test_cad_finding_of_members_without_any_map_has_no_center_or_outline() -> None:
    fx = with_member_without_saliency(build_exam_fixture(), only=True)
    findings = cad_findings(fx.result, 0.0)
    assert len(findings) == len(fx.sources)
    assert all(f.center is None and f.outline is None for f in findings)
    sr = _roundtrip(build_mammo_cad_sr(fx.result, fx.sources, load_settings(
        cad_certainty_threshold=0.0)))
    items = _walk(sr.ContentSequence)
    assert sum(_code(i) == "111059" for i in items) == len(fx.sources)  # single-image findings
    assert not any(_code(i) == CENTER for i in items)


def test_cad_sr_lists_every_member_with_its_per_breast_probabilities() -> None:
    fx = with_member_without_saliency(build_exam_fixture())
    sr = _roundtrip(build_mammo_cad_sr(fx.result, fx.sources, load_settings()))
    detections = [i for i in _walk(sr.ContentSequence) if _code(i) == "111022"]
    by_name = {_algorithm_name(i): [str(c.TextValue) for c in i.ContentSequence
                                    if _code(c) == ALGORITHM_PARAMETERS] for i in detections}
    assert set(by_name) == {m.name for m in fx.result.members}
    for breast in fx.result.breasts:
        side = "left" if breast.laterality is Laterality.LEFT else "right"
        for name, (p_benign, p_malignant) in breast.per_member.items():
            assert (f"{side} breast p(malignant) {p_malignant:.4f} p(benign) {p_benign:.4f}"
                    in by_name[name])
