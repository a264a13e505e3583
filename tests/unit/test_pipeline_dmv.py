"""DMV-CNN members (Wu et al. 2019) in the scoring pipeline.

Exam 0 (the fixture PNGs wrapped as DICOM) through ``score_exam`` / ``process_study`` with
the fixture view-split weights: per-view scores equal a direct call of the model on the
same prepared inputs and the reference's outputs, breasts are the paper's mean of the CC
and MLO branches, a four-view model without one view is left out while GMIC still scores,
and a run with GMIC and DMV-CNN stores and reports both. The image-and-heatmaps member
(no fixture: seeded demo weights) feeds its patch classifier's heatmaps as input channels
and as saliency, and its patch classifier's weights count for the run.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import cv2
import highdicom as hd
import numpy as np
import pydicom
import pytest
import torch
from pydicom.sr.codedict import codes
from sqlalchemy import select

from tests.dicom_builders import exam0_pngs, real_exam0
from tests.dmv_helpers import (
    DMV_TESTING,
    GMIC_TESTING,
    VIEW_SPLIT_WEIGHTS,
    dmv_testing_settings,
    exam_images,
    score_exam0_study,
)
from triage.config import EnsembleMember, load_settings
from triage.db import RunMember, Score, ScoringRun, Study
from triage.errors import ScoringError, WeightsError
from triage.imaging import (
    decode_pixels,
    exam_patch_grids,
    prepare_view,
    prepare_view_resized,
    sample_windows,
    standardize_whole,
    window_plane,
)
from triage.models import build_model, ensure_demo_weights, get_spec, import_weights
from triage.models.dmv_cnn import DMV_INPUT_SIZE
from triage.models.heatmaps import generate_heatmaps
from triage.models.weights import load_member, read_manifest
from triage.outputs.sr_tid1500 import ENSEMBLE_NAME
from triage.pipeline import (
    Ensemble,
    ExamImage,
    Outcome,
    load_ensemble,
    model_set_version,
    score_exam,
)
from triage.pipeline.dmv import SALIENCY_DOWNSAMPLE
from triage.pipeline.views2d import RECIPES
from triage.vocabulary import NOT_TRIAGED, ExamStatus, Laterality, View, WeightsStatus

HEATMAPS = "dmv-cnn-image-and-heatmaps"
PATCH = "dmv-patch-densenet121"
ORDER = ((Laterality.LEFT, View.CC), (Laterality.RIGHT, View.CC),
         (Laterality.LEFT, View.MLO), (Laterality.RIGHT, View.MLO))
PROBABILITY_ATOL = 1e-4  # fixtures README
BREAST_SITE = {Laterality.LEFT: codes.SCT.LeftBreast, Laterality.RIGHT: codes.SCT.RightBreast}


@pytest.fixture(scope="module")
def summary(fixtures_dir: Path) -> dict:
    return json.loads((fixtures_dir / "dmv_cnn_summary.json").read_text())


@pytest.fixture(scope="module")
def exam0(tmp_path_factory: pytest.TempPathFactory) -> list[ExamImage]:
    return exam_images(real_exam0(tmp_path_factory.mktemp("exam0")))


def _rows(summary: dict) -> dict[tuple[Laterality, str], int]:
    """(breast, finding) -> output row, from the fixture's ``output_order`` text."""
    names = summary["output_order"].split("[")[1].split("]")[0].split(",")
    out = {}
    for row, name in enumerate(n.strip() for n in names):
        side, finding = name.split("_")
        out[(Laterality.LEFT if side == "left" else Laterality.RIGHT, finding)] = row
    return out


def _direct(fixtures_dir: Path, arrays: dict[tuple[Laterality, View], np.ndarray]):  # type: ignore[no-untyped-def]
    """The view-wise model with the fixture weights on the four arrays (no pipeline)."""
    model = build_model("dmv-cnn-image-only", weights=fixtures_dir / VIEW_SPLIT_WEIGHTS)
    with torch.inference_mode():
        return model(*(torch.from_numpy(arrays[key])[None, None] for key in ORDER))


def _expected_views(out, summary: dict) -> dict[tuple[Laterality, View], tuple[float, float]]:  # type: ignore[no-untyped-def]
    """(benign, malignant) per view by hand: the CC head's rows for the CC views, the MLO
    head's rows for the MLO views, positive column, exp of the log-probability."""
    rows = _rows(summary)
    expected = {}
    for lat, view in ORDER:
        logprob = (out.cc_logprob if view is View.CC else out.mlo_logprob)[0].numpy()
        expected[(lat, view)] = (float(np.exp(logprob[rows[(lat, "benign")], 1])),
                                 float(np.exp(logprob[rows[(lat, "malignant")], 1])))
    return expected


def _pngs(fixtures_dir: Path) -> dict[tuple[Laterality, View], np.ndarray]:
    return {key: cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            for key, path in exam0_pngs(fixtures_dir).items()}


# -- the testing recipe and the reduced-size member ----------------------------------------
def test_testing_recipe_gives_the_fixture_reduced_inputs_up_to_float16_rounding(
        fixtures_dir: Path) -> None:
    size = get_spec(DMV_TESTING).input_size
    with np.load(fixtures_dir / "dmv_cnn_outputs.npz") as reference:
        for (lat, view), pixels in _pngs(fixtures_dir).items():
            ours = RECIPES["breast_cancer_classifier-testing"](pixels, lat, view, size[view])
            theirs = reference[f"input_{lat.value}-{view.value}"]
            assert ours.array.shape == theirs.shape == size[view]
            # the fixture resized its float16-rounded full-size input: one float16 step
            step = float(np.spacing(np.float16(np.abs(theirs).max())))
            np.testing.assert_allclose(ours.array, theirs.astype(np.float32), rtol=0, atol=step)
            # the frame still maps the full DMV window to the source
            assert ours.frame.input_shape == DMV_INPUT_SIZE[view]


@pytest.fixture(scope="module")
def reduced(tmp_path_factory: pytest.TempPathFactory, exam0: list[ExamImage]):  # type: ignore[no-untyped-def]
    settings = dmv_testing_settings(tmp_path_factory.mktemp("reduced"), {DMV_TESTING: 1.0})
    return score_exam(exam0, load_ensemble(settings), study_instance_uid="1.2.3")


def test_reduced_member_scores_equal_a_direct_model_call_and_the_reference(
        reduced, exam0: list[ExamImage], fixtures_dir: Path, summary: dict) -> None:  # type: ignore[no-untyped-def]
    size = get_spec(DMV_TESTING).input_size
    images = {(i.laterality, i.view): i for i in exam0}
    arrays = {key: RECIPES["breast_cancer_classifier-testing"](
        decode_pixels(pydicom.dcmread(images[key].path)).array, key[0], key[1],
        size[key[1]]).array for key in ORDER}
    expected = _expected_views(_direct(fixtures_dir, arrays), summary)
    reference = {"CC": np.asarray(summary["CC_prob"])[0], "MLO": np.asarray(summary["MLO_prob"])[0]}
    rows = _rows(summary)
    assert len(reduced.views) == 4
    for v in reduced.views:
        assert v.sop_instance_uid == images[(v.laterality, v.view)].sop_instance_uid
        benign, malignant = expected[(v.laterality, v.view)]
        assert v.p_benign == pytest.approx(benign, abs=1e-6)
        assert v.p_malignant == pytest.approx(malignant, abs=1e-6)
        ref = reference[v.view.value]
        assert v.p_benign == pytest.approx(ref[rows[(v.laterality, "benign")], 1],
                                           abs=PROBABILITY_ATOL)
        assert v.p_malignant == pytest.approx(ref[rows[(v.laterality, "malignant")], 1],
                                              abs=PROBABILITY_ATOL)
        assert v.saliency_malignant is None and v.saliency_benign is None and v.rois == ()


def test_breast_scores_are_the_mean_of_the_cc_and_mlo_branches(reduced, summary: dict) -> None:  # type: ignore[no-untyped-def]
    rows = _rows(summary)
    cc, mlo = np.asarray(summary["CC_prob"])[0], np.asarray(summary["MLO_prob"])[0]
    for breast in reduced.breasts:
        benign, malignant = breast.per_member[DMV_TESTING]
        # the paper's rule from the reference's own branch outputs, by hand
        by_hand_benign = (cc[rows[(breast.laterality, "benign")], 1]
                          + mlo[rows[(breast.laterality, "benign")], 1]) / 2
        by_hand_malignant = (cc[rows[(breast.laterality, "malignant")], 1]
                             + mlo[rows[(breast.laterality, "malignant")], 1]) / 2
        assert benign == pytest.approx(by_hand_benign, abs=PROBABILITY_ATOL)
        assert malignant == pytest.approx(by_hand_malignant, abs=PROBABILITY_ATOL)
        # and exactly the mean of the member's own CC and MLO view scores
        views = {v.view: v for v in reduced.views if v.laterality is breast.laterality}
        assert benign == (views[View.CC].p_benign + views[View.MLO].p_benign) / 2
        assert malignant == (views[View.CC].p_malignant + views[View.MLO].p_malignant) / 2
    assert reduced.exam_score == max(b.p_malignant for b in reduced.breasts)


def test_image_only_tta_averages_forwards_over_the_shared_windows(
        tmp_path: Path, exam0: list[ExamImage], fixtures_dir: Path, summary: dict) -> None:
    settings = dmv_testing_settings(tmp_path, {DMV_TESTING: 1.0}, tta_samples=2, tta_seed=3)
    result = score_exam(exam0, load_ensemble(settings), study_instance_uid="1.2.3")
    assert (result.tta_samples, result.tta_seed) == (2, 3)
    # by hand: the pipeline seeds request i (sorted by SOP Instance UID) with tta_seed + i
    size = get_spec(DMV_TESTING).input_size
    ordered = sorted(exam0, key=lambda img: img.sop_instance_uid)
    windows = {}
    for index, img in enumerate(ordered):
        prepared = prepare_view_resized(decode_pixels(pydicom.dcmread(img.path)).array,
                                        img.laterality, img.view, size[img.view],
                                        window_size=DMV_INPUT_SIZE[img.view])
        windows[(img.laterality, img.view)] = [w.array for w in sample_windows(prepared, 2,
                                                                               3 + index)]
    runs = [_expected_views(_direct(fixtures_dir, {k: w[n] for k, w in windows.items()}),
                            summary) for n in range(2)]
    for v in result.views:
        key = (v.laterality, v.view)
        assert v.p_benign == pytest.approx(np.mean([r[key][0] for r in runs]), abs=1e-6)
        assert v.p_malignant == pytest.approx(np.mean([r[key][1] for r in runs]), abs=1e-6)


def test_exam_without_one_view_leaves_dmv_out_and_gmic_still_scores(
        tmp_path: Path, exam0: list[ExamImage]) -> None:
    settings = dmv_testing_settings(tmp_path, {GMIC_TESTING: 0.5, DMV_TESTING: 0.5})
    three = [i for i in exam0 if (i.laterality, i.view) != (Laterality.RIGHT, View.MLO)]
    result = score_exam(three, load_ensemble(settings), study_instance_uid="1.2.3")
    dmv = next(m for m in result.members if m.name == DMV_TESTING)
    assert not dmv.included
    assert dmv.failure_reason and "ScoringError" in dmv.failure_reason
    assert "four-view" in dmv.failure_reason and "missing R-MLO" in dmv.failure_reason
    assert {v.member for v in result.views} == {GMIC_TESTING} and len(result.views) == 3
    assert all(b.per_member.keys() == {GMIC_TESTING} for b in result.breasts)


# -- full size --------------------------------------------------------------------------
def test_full_size_member_equals_a_direct_model_call_on_the_reference_preprocessing(
        tmp_path: Path, exam0: list[ExamImage], fixtures_dir: Path, summary: dict) -> None:
    settings = dmv_testing_settings(tmp_path, {"dmv-cnn-image-only": 1.0})
    result = score_exam(exam0, load_ensemble(settings), study_instance_uid="1.2.3")
    arrays = {key: prepare_view(pixels, key[0], key[1], DMV_INPUT_SIZE[key[1]]).array
              for key, pixels in _pngs(fixtures_dir).items()}
    out = _direct(fixtures_dir, arrays)
    expected = _expected_views(out, summary)
    reference = {"CC": np.asarray(summary["full_res"]["CC_prob"])[0],
                 "MLO": np.asarray(summary["full_res"]["MLO_prob"])[0]}
    rows = _rows(summary)
    for v in result.views:
        benign, malignant = expected[(v.laterality, v.view)]
        assert v.p_benign == pytest.approx(benign, abs=1e-6)
        assert v.p_malignant == pytest.approx(malignant, abs=1e-6)
        ref = reference[v.view.value]
        assert v.p_malignant == pytest.approx(ref[rows[(v.laterality, "malignant")], 1],
                                              abs=PROBABILITY_ATOL)
        assert v.frame.input_shape == DMV_INPUT_SIZE[v.view]
    for breast in result.breasts:  # the model's own breast output (mean of the branches)
        side = "left" if breast.laterality is Laterality.LEFT else "right"
        assert breast.per_member["dmv-cnn-image-only"][1] == pytest.approx(
            float(getattr(out.breast, f"{side}_malignant")[0]), abs=1e-6)


# -- GMIC and DMV-CNN through process_study, the DB and the SR --------------------------------
@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    scored = score_exam0_study(tmp_path_factory.mktemp("stored"),
                               {GMIC_TESTING: 0.25, DMV_TESTING: 0.75})
    yield scored
    scored.db.dispose()


def test_both_members_are_stored_with_their_per_breast_scores(stored) -> None:  # type: ignore[no-untyped-def]
    assert stored.outcome is Outcome.SCORED
    with stored.db.session() as session:
        study = session.get(Study, stored.study_id)
        assert study is not None and study.status == ExamStatus.DELIVERED.value
        run = session.scalars(select(ScoringRun).where(
            ScoringRun.study_id == stored.study_id)).one()
        members = {m.name: m for m in session.scalars(select(RunMember).where(
            RunMember.run_id == run.id))}
        assert members.keys() == {GMIC_TESTING, DMV_TESTING}
        assert all(m.included for m in members.values())
        assert members[DMV_TESTING].weights_status == WeightsStatus.IMPORTED_UNVERIFIED.value
        scores = session.scalars(select(Score).where(Score.run_id == run.id)).all()
        weights = {GMIC_TESTING: 0.25, DMV_TESTING: 0.75}
        for lat in ("L", "R"):
            member_breast = {}
            for name in weights:
                views = [s for s in scores if s.level == "view" and s.member == name
                         and s.laterality == lat]
                assert sorted(s.view for s in views) == ["CC", "MLO"]
                breast, = [s for s in scores if s.level == "breast" and s.member == name
                           and s.laterality == lat]
                assert breast.p_malignant == pytest.approx(
                    sum(s.p_malignant for s in views) / 2, abs=1e-9)
                assert breast.p_benign == pytest.approx(sum(s.p_benign for s in views) / 2,
                                                        abs=1e-9)
                member_breast[name] = breast
            ensemble, = [s for s in scores if s.level == "breast" and s.member is None
                         and s.laterality == lat]
            assert ensemble.p_malignant == pytest.approx(
                sum(w * member_breast[n].p_malignant for n, w in weights.items()), abs=1e-9)
        assert run.category == NOT_TRIAGED


def test_tid1500_sr_lists_both_members_with_their_per_breast_probabilities(stored) -> None:  # type: ignore[no-untyped-def]
    out_dir = stored.settings.outputs_dir / stored.study_instance_uid
    sr_path, = out_dir.glob("sr_tid1500-*.dcm")
    report = hd.sr.Comprehensive3DSR.from_dataset(pydicom.dcmread(sr_path))
    with stored.db.session() as session:
        breast_scores = {(s.member, s.laterality): (s.p_benign, s.p_malignant)
                         for s in session.scalars(select(Score).where(Score.level == "breast"))}
    for lat in (Laterality.LEFT, Laterality.RIGHT):
        for finding, concept, index in ((codes.SCT.Malignant, codes.DCM.ProbabilityOfCancer, 1),
                                        (codes.SCT.Benign, codes.DCM.Probability, 0)):
            group, = report.content.get_image_measurement_groups(
                finding_type=finding, finding_site=BREAST_SITE[lat])
            values = {}
            for m in group.get_measurements(name=concept):
                name = next(str(c.TextValue) for c in m[0].ContentSequence
                            if c.ConceptNameCodeSequence[0].CodeValue == "111001")
                values[name] = m.value
            assert values.keys() == {ENSEMBLE_NAME, GMIC_TESTING, DMV_TESTING}
            for name in (GMIC_TESTING, DMV_TESTING):
                assert values[name] == pytest.approx(breast_scores[(name, lat.value)][index],
                                                     abs=1e-9)
            assert values[ENSEMBLE_NAME] == pytest.approx(
                breast_scores[(None, lat.value)][index], abs=1e-9)


def test_overlays_are_built_for_every_scored_view(stored) -> None:  # type: ignore[no-untyped-def]
    out_dir = stored.settings.outputs_dir / stored.study_instance_uid
    overlays = [pydicom.dcmread(p) for p in sorted(out_dir.glob("sc_overlay-*.dcm"))]
    with stored.db.session() as session:
        run = session.scalars(select(ScoringRun)).one()
        scored = set(run.details["scored_sop_instance_uids"])
    assert {str(o.SourceImageSequence[0].ReferencedSOPInstanceUID) for o in overlays} == scored
    assert len(scored) == 4


# -- image-and-heatmaps (no fixture: seeded demo weights) -----------------------------------
SMALL = {View.CC: (335, 243), View.MLO: (372, 218)}


def _heatmaps_settings(tmp: Path, **overrides: object):  # type: ignore[no-untyped-def]
    settings = load_settings(data_dir=tmp / "data", allow_uncalibrated=True, device="cpu",
                             ensemble=[EnsembleMember(name=HEATMAPS, weight=1.0)], **overrides)
    settings.prepare_directories()
    created = {e.name for e in ensure_demo_weights(settings)}
    assert created == {HEATMAPS, PATCH}  # the member's companion gets demo weights too
    return settings


def _small_exam(tmp: Path) -> list[ExamImage]:
    from triage.synthetic import ExamSpec, generate_exam

    summary = generate_exam(ExamSpec(seed=5, matrix=(384, 320), lesion=True), tmp / "exam")
    return exam_images([Path(p) for p in summary.files])


def test_image_and_heatmaps_member_feeds_heatmap_channels_and_reports_its_patch_classifier(
        tmp_path: Path) -> None:
    settings = _heatmaps_settings(tmp_path)
    # the member's own weights imported (unverified), its patch classifier's still demo
    demo = settings.models_dir / read_manifest(settings)[HEATMAPS].file
    import_weights(demo, HEATMAPS, settings)
    loaded = load_member(HEATMAPS, settings, torch.device("cpu"))
    patch = loaded.companion(PATCH)
    # the registered member at a reduced input size (same code; full size takes minutes)
    member = replace(loaded, spec=replace(loaded.spec, input_size=SMALL,
                                          preprocessing="breast_cancer_classifier-testing"))
    seen: list[tuple[torch.Tensor, ...]] = []
    hook = member.module.register_forward_pre_hook(
        lambda _module, args: seen.append(tuple(a.detach().clone() for a in args)))
    ensemble = Ensemble(settings=settings, device=torch.device("cpu"), members=[member],
                        weights={HEATMAPS: 1.0}, modality={HEATMAPS: "ffdm"},
                        model_set_version=model_set_version([member], {HEATMAPS: 1.0}, 0, 0))
    images = _small_exam(tmp_path)
    try:
        result = score_exam(images, ensemble, study_instance_uid="1.2.3")
    finally:
        hook.remove()

    # inputs: [image, benign heatmap, malignant heatmap] per view, the heatmaps computed
    # here from the patch classifier on the exam's grids and windowed like the image
    by_key = {(i.laterality, i.view): i for i in images}
    prepared = {key: prepare_view_resized(
        decode_pixels(pydicom.dcmread(by_key[key].path)).array, key[0], key[1], SMALL[key[1]],
        window_size=DMV_INPUT_SIZE[key[1]]) for key in ORDER}
    grids = exam_patch_grids([prepared[key].flipped_crop.shape for key in ORDER], seed=0)
    (inputs,) = seen
    for key, grid, x in zip(ORDER, grids, inputs, strict=True):
        maps = generate_heatmaps(patch.module, torch.from_numpy(
            standardize_whole(prepared[key].flipped_crop)), grid)
        assert tuple(x.shape) == (1, 3, *SMALL[key[1]])
        np.testing.assert_array_equal(x[0, 0].numpy(), prepared[key].array)
        np.testing.assert_allclose(x[0, 1].numpy(), window_plane(prepared[key],
                                                                 maps.benign.numpy()), atol=1e-6)
        np.testing.assert_allclose(x[0, 2].numpy(), window_plane(prepared[key],
                                                                 maps.malignant.numpy()), atol=1e-6)
        assert float(x[0, 1:].min()) >= 0.0 and float(x[0, 1:].max()) <= 1.0

    # saliency: the heatmap channels on a grid 1/8 of the full model window
    for v in result.views:
        x = inputs[ORDER.index((v.laterality, v.view))][0]
        rows, cols = DMV_INPUT_SIZE[v.view]
        grid_shape = (round(rows / SALIENCY_DOWNSAMPLE), round(cols / SALIENCY_DOWNSAMPLE))
        assert v.saliency_malignant is not None and v.saliency_benign is not None
        assert v.saliency_malignant.shape == v.saliency_benign.shape == grid_shape
        for channel, sal in ((2, v.saliency_malignant), (1, v.saliency_benign)):
            np.testing.assert_allclose(sal, cv2.resize(
                x[channel].numpy(), grid_shape[::-1], interpolation=cv2.INTER_AREA), atol=1e-6)

    # the patch classifier is recorded with the member and its demo weights count
    info, = result.members
    assert loaded.weights_status is WeightsStatus.IMPORTED_UNVERIFIED
    assert info.weights_status is WeightsStatus.SYNTHETIC_DEMO
    assert info.weights_sha256 == loaded.sha256
    assert PATCH in info.architecture and patch.sha256 and patch.sha256 in info.architecture
    assert any(PATCH in note and patch.sha256 in note and "synthetic_demo" in note
               for note in result.notes)
    assert result.category == NOT_TRIAGED and not result.verified


def test_patch_classifier_weights_change_the_model_set_version(tmp_path: Path,
                                                               fixtures_dir: Path) -> None:
    settings = _heatmaps_settings(tmp_path)
    before = load_ensemble(settings)
    import_weights(fixtures_dir / "patch_densenet121_weights_fp16.pt", PATCH, settings)
    after = load_ensemble(settings)
    assert before.members[0].sha256 == after.members[0].sha256
    assert before.model_set_version != after.model_set_version
    assert after.members[0].companion(PATCH).weights_status is WeightsStatus.IMPORTED_UNVERIFIED


def test_heatmaps_member_without_patch_classifier_weights_fails_at_load(tmp_path: Path) -> None:
    source = _heatmaps_settings(tmp_path / "a")
    settings = load_settings(data_dir=tmp_path / "b" / "data", allow_uncalibrated=True,
                             ensemble=[EnsembleMember(name=HEATMAPS, weight=1.0)])
    settings.prepare_directories()
    import_weights(source.models_dir / read_manifest(source)[HEATMAPS].file, HEATMAPS, settings)
    with pytest.raises(WeightsError, match=f"{HEATMAPS} needs {PATCH} for its heatmaps"):
        load_ensemble(settings)


def test_heatmaps_member_refuses_test_time_augmentation(tmp_path: Path) -> None:
    settings = _heatmaps_settings(tmp_path, tta_samples=1)
    ensemble = load_ensemble(settings)
    with pytest.raises(ScoringError, match="does not support test-time augmentation"):
        score_exam(_small_exam(tmp_path), ensemble, study_instance_uid="1.2.3")
