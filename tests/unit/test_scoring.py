"""Aggregation view -> breast -> exam and categories, with hand-computed numbers."""

from __future__ import annotations

import pytest

from triage.config import PriorityLevel
from triage.errors import ScoringError
from triage.scoring import ViewProbability, categorise, combine_members, exam_score
from triage.vocabulary import NOT_TRIAGED, Laterality, View

L, R = Laterality.LEFT, Laterality.RIGHT
CC, MLO = View.CC, View.MLO
LEVELS = [PriorityLevel(name="HIGH", min_score=0.5), PriorityLevel(name="MEDIUM", min_score=0.2),
          PriorityLevel(name="ROUTINE", min_score=0.0)]


def vp(m: str, lat: Laterality, view: View, b: float, mal: float) -> ViewProbability:
    return ViewProbability(m, lat, view, b, mal)


def test_breast_is_mean_of_cc_and_mlo_and_members_are_weighted() -> None:
    views = [
        vp("a", L, CC, 0.2, 0.1), vp("a", L, MLO, 0.4, 0.3),  # a: L = (0.3, 0.2)
        vp("b", L, CC, 0.6, 0.5), vp("b", L, MLO, 0.8, 0.7),  # b: L = (0.7, 0.6)
        vp("a", R, CC, 0.1, 0.05), vp("a", R, MLO, 0.1, 0.15),  # a: R = (0.1, 0.1)
        vp("b", R, CC, 0.3, 0.2), vp("b", R, MLO, 0.5, 0.4),  # b: R = (0.4, 0.3)
    ]
    breasts = combine_members(views, {"a": 0.75, "b": 0.25})
    left, right = breasts
    assert left.laterality is L and right.laterality is R
    assert left.p_benign == pytest.approx(0.75 * 0.3 + 0.25 * 0.7)  # 0.4
    assert left.p_malignant == pytest.approx(0.75 * 0.2 + 0.25 * 0.6)  # 0.3
    assert right.p_malignant == pytest.approx(0.75 * 0.1 + 0.25 * 0.3)  # 0.15
    assert left.per_member["b"] == pytest.approx((0.7, 0.6))
    assert exam_score(breasts) == pytest.approx(0.3)


def test_member_missing_a_breast_is_renormalised_not_counted_as_zero() -> None:
    views = [vp("a", L, CC, 0.2, 0.4), vp("a", L, MLO, 0.2, 0.4), vp("b", R, CC, 0.1, 0.9)]
    left, right = combine_members(views, {"a": 0.5, "b": 0.5})
    assert left.p_malignant == pytest.approx(0.4)
    assert right.p_malignant == pytest.approx(0.9) and right.views_used == (CC,)


def test_two_scores_for_one_view_of_a_member_is_an_error() -> None:
    with pytest.raises(ScoringError, match="two scores"):
        combine_members([vp("a", L, CC, 0.1, 0.1), vp("a", L, CC, 0.2, 0.2)], {"a": 1.0})


@pytest.mark.parametrize(("score", "name"), [(0.9, "HIGH"), (0.5, "HIGH"), (0.49, "MEDIUM"),
                                              (0.2, "MEDIUM"), (0.0, "ROUTINE")])
def test_category_follows_configured_cutoffs(score: float, name: str) -> None:
    assert categorise(score, LEVELS, verified=True).name == name


def test_unverified_weights_give_not_triaged_with_reason() -> None:
    cat = categorise(0.99, LEVELS, verified=False, unverified_members=["gmic-resnet18-1"])
    assert cat.name == NOT_TRIAGED
    assert cat.reason is not None and "gmic-resnet18-1" in cat.reason


def test_missing_views_names_a_missing_breast_and_single_views() -> None:
    from triage.scoring import missing_views

    assert missing_views([(L, CC), (L, MLO), (R, CC), (R, MLO)]) == []
    assert missing_views([(L, CC), (L, MLO)]) == ["no right breast scored (R-CC, R-MLO)"]
    assert missing_views([(L, CC), (R, CC), (R, MLO)]) == ["L-MLO not scored"]


@pytest.mark.parametrize("score", [0.99, 0.3, 0.0])
def test_partial_exam_never_gets_a_priority_level(score: float) -> None:
    gaps = ["no right breast scored (R-CC, R-MLO)"]
    cat = categorise(score, LEVELS, verified=True, coverage_gaps=gaps)
    assert cat.name == NOT_TRIAGED
    assert cat.reason == "partial exam: no right breast scored (R-CC, R-MLO)"
    by_policy = categorise(score, LEVELS, verified=True, coverage_gaps=gaps, partial_category=True)
    assert by_policy.name == "PARTIAL" and by_policy.reason == cat.reason


def test_unverified_partial_exam_says_both_reasons() -> None:
    cat = categorise(0.4, LEVELS, verified=False, unverified_members=["m"],
                     coverage_gaps=["L-MLO not scored"])
    assert cat.name == NOT_TRIAGED and cat.reason is not None
    assert "m are not verified" in cat.reason and "partial exam: L-MLO not scored" in cat.reason


def test_coverage_gaps_count_failed_views_and_members_that_had_images_only() -> None:
    from pathlib import Path

    from triage.pipeline.exam import coverage_gaps
    from triage.pipeline.images import ExamImage
    from triage.results import InputFrame, MemberInfo, ViewScore
    from triage.vocabulary import WeightsStatus

    def img(lat: Laterality, view: View) -> ExamImage:
        return ExamImage(f"1.2.{lat.value}.{view.value}", "1.2.840", Path("x"), lat, view)

    def score(member: str, image: ExamImage) -> ViewScore:
        frame = InputFrame((4, 4), 0, 0, (4, 4), False, 0, 0, 0, 0, (4, 4))
        return ViewScore(member, image.sop_instance_uid, "1.2.840", image.laterality, image.view,
                         0.1, 0.2, None, None, frame)

    def info(name: str, included: bool = True, reason: str | None = None) -> MemberInfo:
        return MemberInfo(name, "1", "arch", "ffdm", 1.0, None, WeightsStatus.SYNTHETIC_DEMO,
                          included, reason)

    four = (img(L, CC), img(L, MLO), img(R, CC), img(R, MLO))
    weights = {"ffdm": 1.0}
    full = [score("a", i) for i in four]
    # a DBT member with no DBT image is not a gap
    assert coverage_gaps({"a": four, "dbt": ()}, [info("a"), info("dbt", False, "no dbt")],
                         full, {}, weights) == []
    # a view that failed to decode; a member that failed on its images
    gaps = coverage_gaps({"a": four, "b": four}, [info("a"), info("b", False, "boom")],
                         full[:3], {four[3].sop_instance_uid: "DecodeError: bad"}, weights)
    assert gaps == ["R-MLO not scored", f"view R-MLO {four[3].sop_instance_uid} failed: "
                    "DecodeError: bad", "member b failed: boom"]


def test_a_member_without_a_benign_output_is_left_out_of_the_benign_mean_only() -> None:
    """The all-convolutional classifier estimates malignancy only: it counts for the
    malignant probability and leaves benign to the members that estimate it."""
    views = [
        vp("g", L, CC, 0.2, 0.1), vp("g", L, MLO, 0.4, 0.3),  # g: L = (0.3, 0.2)
        ViewProbability("a", L, CC, None, 0.5), ViewProbability("a", L, MLO, None, 0.7),
    ]
    (left,) = combine_members(views, {"g": 0.5, "a": 0.5})
    assert left.p_benign == pytest.approx(0.3)  # g's alone, not pulled towards 0
    assert left.p_malignant == pytest.approx(0.4)  # (0.2 + 0.6) / 2
    assert left.per_member["a"] == (None, pytest.approx(0.6))
    only = combine_members(views[2:], {"a": 1.0})[0]
    assert only.p_benign is None
