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
