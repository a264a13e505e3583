"""Tomosynthesis through score_exam: the 3D-GMIC runner, exams with several image classes,
and DBT the product cannot read.

Reduced-resolution members with seeded demo weights (TRIAGE_TESTING): gmic-testing-small
for FFDM / synthetic 2D, gmic3d-testing-small (1024x640 slices, the same code as the
published 3D-GMIC) for DBT. Exams are synthetic combo visits at 1/4 size with 8 slices;
images are classified by the ingest classifier, as the listener would, and only scorable
ones reach score_exam (as ``task.chosen_images`` does).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pydicom.uid import UID

from triage.config import EnsembleMember, Settings, load_settings
from triage.dicom.classify import classify_instance
from triage.imaging.volume import prepare_volume
from triage.models import ensure_demo_weights
from triage.pipeline import ExamImage, load_ensemble, score_exam, tomo
from triage.pipeline.runners import ExamInputs
from triage.pipeline.tomo import score_volume
from triage.pipeline.views2d import Prepared
from triage.results import ExamResult, ViewScore
from triage.synthetic import ExamSpec, build_dbt_view, dbt_view_specs, generate_dbt_exam
from triage.vocabulary import ImageClass, Laterality, View

FFDM_MEMBER, DBT_MEMBER = "gmic-testing-small", "gmic3d-testing-small"
BOTH = [EnsembleMember(name=FFDM_MEMBER, weight=0.5),
        EnsembleMember(name=DBT_MEMBER, weight=0.5, modality="dbt")]
SLICES = 8
MULTIFRAME_GRAYSCALE_WORD_SC = "1.2.840.10008.5.1.4.1.1.7.3"


def settings_for(data_dir: Path, members: list[EnsembleMember], **extra: object) -> Settings:
    settings = load_settings(data_dir=data_dir, testing=True, allow_uncalibrated=True,
                             device="cpu", ensemble=members, **extra)
    settings.prepare_directories()
    ensure_demo_weights(settings)
    return settings


def exam_images(files: Sequence[Path], settings: Settings) -> list[ExamImage]:
    """The scorable images, classified from their headers as the listener does."""
    images = []
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        found = classify_instance(ds, settings)
        if found.scorable and found.laterality and found.view:
            images.append(ExamImage(str(ds.SOPInstanceUID), str(ds.SOPClassUID), path,
                                    found.laterality, found.view, found.image_class))
    return images


def of_class(images: Sequence[ExamImage], *classes: ImageClass) -> list[ExamImage]:
    return [img for img in images if img.image_class in classes]


def breast_mean(views: Sequence[ViewScore], lat: Laterality, cls: str) -> tuple[float, float]:
    own = [v for v in views if v.laterality is lat and v.image_class == cls]
    assert {v.view for v in own} == {View.CC, View.MLO}
    return (sum(v.p_benign for v in own) / 2, sum(v.p_malignant for v in own) / 2)


@pytest.fixture(scope="module")
def combo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, list[ExamImage], str]:
    tmp = tmp_path_factory.mktemp("tomo")
    settings = settings_for(tmp / "data", BOTH)
    summary = generate_dbt_exam(ExamSpec(seed=5, lesion=True, scale=0.25), tmp / "exam",
                                slices=SLICES, combo=True)
    images = exam_images(summary.files, settings)
    assert len(images) == 12
    return settings, images, summary.study_instance_uid


@pytest.fixture(scope="module")
def combo_result(combo: tuple[Settings, list[ExamImage], str]) -> ExamResult:
    settings, images, uid = combo
    return score_exam(images, load_ensemble(settings), study_instance_uid=uid)


def test_each_dbt_view_is_a_direct_3d_gmic_call_on_its_prepared_volume(
    combo: tuple[Settings, list[ExamImage], str], combo_result: ExamResult,
) -> None:
    settings, images, _ = combo
    module = load_ensemble(settings).members[1].module
    dbt_views = [v for v in combo_result.views if v.member == DBT_MEMBER]
    assert sorted((v.laterality.value, v.view.value) for v in dbt_views) == [
        ("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO")]
    for view in [v for v in dbt_views if (v.laterality.value, v.view.value) in (
            ("L", "CC"), ("R", "MLO"))]:  # one of each view and side (CI time)
        image = next(i for i in images if i.sop_instance_uid == view.sop_instance_uid)
        # reference path: the whole data set in memory, prepared, one forward
        prepared = prepare_volume(pydicom.dcmread(image.path), (1024, 640))
        with torch.inference_mode():
            out = module(torch.from_numpy(prepared.array)[None, None])
        assert (view.p_benign, view.p_malignant) == pytest.approx(
            tuple(out.final_prediction[0].tolist()), abs=1e-5)
        assert view.image_class == "dbt" and view.frame == prepared.frame
        saliency = out.saliency_map.numpy()
        malignant_peaks = saliency[:, 1].max(axis=(1, 2))
        shown = prepared.frame_indices.index(view.saliency_slice)
        assert malignant_peaks[shown] == malignant_peaks.max()
        assert view.saliency_malignant is not None and view.saliency_benign is not None
        np.testing.assert_allclose(view.saliency_malignant, saliency[shown, 1], atol=1e-6)
        np.testing.assert_allclose(view.saliency_benign, saliency[shown, 0], atol=1e-6)
        expected_rois = [(int(r), int(c), prepared.frame_indices[int(s)])
                         for (r, c), s in zip(out.patch_locations[0].tolist(),
                                              out.slice_numbers[0].tolist(), strict=True)]
        assert [(r.top, r.left, r.frame) for r in view.rois] == expected_rois
        assert all((r.height, r.width) == (128, 128) for r in view.rois)


def test_ffdm_synthetic_2d_and_dbt_are_averaged_per_breast_by_default(
    combo_result: ExamResult,
) -> None:
    """Default class weights are equal: each breast is the mean of its three classes, each
    class being its members' mean of CC and MLO (one member per class here)."""
    for breast in combo_result.breasts:
        per_class = [breast_mean(combo_result.views, breast.laterality, c)
                     for c in ("ffdm", "synthetic2d", "dbt")]
        assert breast.p_benign == pytest.approx(sum(p[0] for p in per_class) / 3, abs=1e-9)
        assert breast.p_malignant == pytest.approx(sum(p[1] for p in per_class) / 3, abs=1e-9)
        # the FFDM member's own number: its FFDM and synthetic 2D classes, equally weighted
        ffdm, synthetic = per_class[0], per_class[1]
        assert breast.per_member[FFDM_MEMBER] == pytest.approx(
            ((ffdm[0] + synthetic[0]) / 2, (ffdm[1] + synthetic[1]) / 2))
        assert breast.per_member[DBT_MEMBER] == pytest.approx(per_class[2])
    assert combo_result.exam_score == max(b.p_malignant for b in combo_result.breasts)
    assert "scored on FFDM, synthetic 2D and DBT" in combo_result.notes
    assert "synthetic 2D images scored by FFDM models (domain shift)" in combo_result.notes
    assert all(m.included for m in combo_result.members)


def test_frames_stored_in_reverse_are_scored_in_slice_order_and_reported_as_stored_frames(
    combo: tuple[Settings, list[ExamImage], str], tmp_path: Path,
) -> None:
    settings, _, _ = combo
    member = load_ensemble(settings).members[1]
    slices = 4
    spec = next(s for s in dbt_view_specs(ExamSpec(seed=8, lesion=True, scale=0.25),
                                          slices=slices) if s.lesion is not None)
    scores = []
    for reverse in (False, True):
        ds = build_dbt_view(replace(spec, reversed_storage=reverse))
        path = tmp_path / f"reverse-{reverse}.dcm"
        ds.save_as(path, enforce_file_format=True)
        image = ExamImage(str(ds.SOPInstanceUID), str(ds.SOPClassUID), path,
                          Laterality(spec.laterality.value), View(spec.view.value),
                          ImageClass.DBT)
        scores.append(score_volume(member, image, torch.device("cpu")).score)
    forward, backward = scores
    last = slices - 1
    assert backward.p_malignant == pytest.approx(forward.p_malignant, abs=1e-6)
    assert forward.saliency_slice is not None
    assert backward.saliency_slice == last - forward.saliency_slice
    assert [r.frame for r in backward.rois] == [last - r.frame for r in forward.rois
                                                if r.frame is not None]
    assert backward.saliency_malignant is not None and forward.saliency_malignant is not None
    np.testing.assert_allclose(backward.saliency_malignant, forward.saliency_malignant,
                               atol=1e-6)


def test_an_ffdm_exam_is_scored_on_ffdm_and_says_dbt_is_absent(
    combo: tuple[Settings, list[ExamImage], str],
) -> None:
    settings, images, uid = combo
    result = score_exam(of_class(images, ImageClass.FFDM), load_ensemble(settings),
                        study_instance_uid=uid)
    assert result.notes[0] == "scored on FFDM only; no DBT images"
    dbt_member = next(m for m in result.members if m.name == DBT_MEMBER)
    assert not dbt_member.included and "no dbt image" in (dbt_member.failure_reason or "")
    for breast in result.breasts:
        assert (breast.p_benign, breast.p_malignant) == pytest.approx(
            breast_mean(result.views, breast.laterality, "ffdm"))
        assert breast.per_member.keys() == {FFDM_MEMBER}


def test_dbt_archived_as_secondary_capture_is_not_scored_and_the_exam_scores_on_ffdm(
    combo: tuple[Settings, list[ExamImage], str], tmp_path: Path,
) -> None:
    """A vendor's DBT as multi-frame secondary capture: stored with its reason at ingest,
    never chosen, and the exam is scored on the FFDM views it has."""
    settings, images, uid = combo
    files = []
    for image in of_class(images, ImageClass.FFDM, ImageClass.DBT):
        path = tmp_path / image.path.name
        if image.image_class is ImageClass.DBT:
            ds = pydicom.dcmread(image.path)
            ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = UID(
                MULTIFRAME_GRAYSCALE_WORD_SC)
            ds.save_as(path, enforce_file_format=True)
            found = classify_instance(ds, settings)
            assert not found.scorable and found.image_class is ImageClass.OTHER
            assert found.reason and "secondary capture" in found.reason.lower()
        else:
            shutil.copy(image.path, path)
        files.append(path)
    scorable = exam_images(files, settings)
    assert {i.image_class for i in scorable} == {ImageClass.FFDM}
    result = score_exam(scorable, load_ensemble(settings), study_instance_uid=uid)
    assert result.notes[0] == "scored on FFDM only; no DBT images"
    assert {v.image_class for v in result.views} == {"ffdm"}


def _truncate(path: Path, target: Path, keep: float) -> Path:
    data = path.read_bytes()
    target.write_bytes(data[:int(len(data) * keep)])
    return target


def test_an_unreadable_dbt_view_is_noted_and_the_other_dbt_views_still_count(
    combo: tuple[Settings, list[ExamImage], str], tmp_path: Path,
) -> None:
    settings, images, uid = combo
    chosen = of_class(images, ImageClass.FFDM, ImageClass.DBT)
    broken = next(i for i in chosen if i.image_class is ImageClass.DBT
                  and (i.laterality, i.view) == (Laterality.LEFT, View.CC))
    chosen[chosen.index(broken)] = replace(
        broken, path=_truncate(broken.path, tmp_path / "cut.dcm", 0.6))
    result = score_exam(chosen, load_ensemble(settings), study_instance_uid=uid)
    assert any(n.startswith(f"view {broken.sop_instance_uid} not scored: ") for n in result.notes)
    assert broken.sop_instance_uid not in result.scored_sop_instance_uids
    assert all(m.included for m in result.members)
    assert result.notes[0] == "scored on FFDM and DBT"
    left = next(b for b in result.breasts if b.laterality is Laterality.LEFT)
    dbt_left = [v for v in result.views if v.image_class == "dbt" and v.laterality is Laterality.LEFT]
    assert [v.view for v in dbt_left] == [View.MLO]
    ffdm = breast_mean(result.views, Laterality.LEFT, "ffdm")
    assert left.p_malignant == pytest.approx((ffdm[1] + dbt_left[0].p_malignant) / 2)


def test_an_exam_whose_dbt_is_all_unreadable_scores_on_ffdm_and_says_so(
    combo: tuple[Settings, list[ExamImage], str], tmp_path: Path,
) -> None:
    settings, images, uid = combo
    chosen = [replace(i, path=_truncate(i.path, tmp_path / i.path.name, 0.3))
              if i.image_class is ImageClass.DBT else i
              for i in of_class(images, ImageClass.FFDM, ImageClass.DBT)]
    result = score_exam(chosen, load_ensemble(settings), study_instance_uid=uid)
    dbt_member = next(m for m in result.members if m.name == DBT_MEMBER)
    assert not dbt_member.included
    assert "no DBT view of the exam could be decoded" in (dbt_member.failure_reason or "")
    assert result.notes[0] == "scored on FFDM only"
    assert any(n.startswith("DBT images not scored") for n in result.notes)
    assert sum(n.endswith("cannot be decoded") or " not scored: " in n
               for n in result.notes) >= 4
    assert {v.image_class for v in result.views} == {"ffdm"}


def test_dbt_without_a_dbt_member_and_ffdm_without_an_ffdm_member_are_noted(
    combo: tuple[Settings, list[ExamImage], str], tmp_path: Path,
) -> None:
    settings, images, uid = combo
    chosen = of_class(images, ImageClass.FFDM, ImageClass.DBT)
    ffdm_only = settings_for(settings.data_dir, [EnsembleMember(name=FFDM_MEMBER, weight=1.0)])
    result = score_exam(chosen, load_ensemble(ffdm_only), study_instance_uid=uid)
    assert result.notes[:2] == ("scored on FFDM only",
                                "DBT images present but no ensemble member scores DBT: "
                                "not scored")
    assert {v.image_class for v in result.views} == {"ffdm"}

    dbt_only = settings_for(settings.data_dir, [EnsembleMember(name=DBT_MEMBER, weight=1.0,
                                                               modality="dbt")],
                            tta_samples=2)
    result = score_exam(chosen, load_ensemble(dbt_only), study_instance_uid=uid)
    assert "FFDM images present but no ensemble member scores FFDM: not scored" in result.notes
    assert "DBT views scored without test-time augmentation" in result.notes
    assert result.notes[0] == "scored on DBT only"
    assert {v.image_class for v in result.views} == {"dbt"}


def test_several_dbt_members_share_each_prepared_volume(
    combo: tuple[Settings, list[ExamImage], str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each DBT view is read and prepared once for all 3D-GMIC members (not once per
    member), and sharing it changes no member's scores."""
    settings, images, _ = combo
    first = load_ensemble(settings).members[1]
    second = replace(first, spec=replace(first.spec, name=f"{first.spec.name}-b"))
    dbt = of_class(images, ImageClass.DBT)
    reads: list[str] = []
    real_load = tomo.load_checked_volume

    def counting_load(image: ExamImage, size: tuple[int, int]) -> object:
        reads.append(image.sop_instance_uid)
        return real_load(image, size)

    monkeypatch.setattr(tomo, "load_checked_volume", counting_load)
    inputs = ExamInputs(images=tuple(dbt), prepared=Prepared(), augmented={},
                        device=torch.device("cpu"))
    outcome = tomo.TOMO.run_members([first, second], inputs)
    assert sorted(reads) == sorted(img.sop_instance_uid for img in dbt)  # once per view
    shared_first, shared_second = outcome[first.spec.name], outcome[second.spec.name]
    assert isinstance(shared_first, list) and isinstance(shared_second, list)
    alone = tomo.TOMO.run(first, inputs)
    assert [(s.sop_instance_uid, s.p_benign, s.p_malignant) for s in shared_first] == \
        [(s.sop_instance_uid, s.p_benign, s.p_malignant) for s in alone]
    assert [(s.p_benign, s.p_malignant) for s in shared_second] == \
        [(s.p_benign, s.p_malignant) for s in alone]  # same weights under another name
