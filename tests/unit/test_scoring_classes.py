"""Per-breast combination across image classes (FFDM, synthetic 2D, DBT) with the class
weights, hand-computed; and the TRIAGE_CLASS_WEIGHTS start-up checks."""

from __future__ import annotations

import pytest

from triage.config import CLASS_WEIGHT_CLASSES, load_settings
from triage.dicom.classify import SCORABLE_CLASSES
from triage.errors import ConfigError, ScoringError
from triage.scoring import ViewProbability, combine_classes, combine_members
from triage.vocabulary import Laterality, View

L, R = Laterality.LEFT, Laterality.RIGHT
CC, MLO = View.CC, View.MLO
EQUAL = {"ffdm": 1.0, "synthetic2d": 1.0, "dbt": 1.0}


def vp(m: str, lat: Laterality, view: View, b: float, mal: float,
       cls: str = "ffdm") -> ViewProbability:
    return ViewProbability(m, lat, view, b, mal, cls)


FFDM_ONLY = [
    vp("a", L, CC, 0.2, 0.1), vp("a", L, MLO, 0.4, 0.3),
    vp("b", L, CC, 0.6, 0.5), vp("b", L, MLO, 0.8, 0.7),
    vp("a", R, CC, 0.1, 0.05), vp("b", R, MLO, 0.3, 0.2),
]


def test_one_class_gives_exactly_the_member_combination() -> None:
    weights = {"a": 0.75, "b": 0.25}
    by_class = combine_classes(FFDM_ONLY, weights, EQUAL)
    by_member = combine_members(FFDM_ONLY, weights)
    assert [(b.laterality, b.p_benign, b.p_malignant, b.per_member, b.views_used)
            for b in by_class] == [(b.laterality, b.p_benign, b.p_malignant, b.per_member,
                                    b.views_used) for b in by_member]
    assert all(b.classes == ("ffdm",) for b in by_class)


def test_classes_are_weighted_and_renormalised_over_the_classes_a_breast_has() -> None:
    views = [
        # FFDM members a (0.3) and b (0.2): left a = (0.3, 0.2), b = (0.7, 0.6)
        vp("a", L, CC, 0.2, 0.1), vp("a", L, MLO, 0.4, 0.3),
        vp("b", L, CC, 0.6, 0.5), vp("b", L, MLO, 0.8, 0.7),
        # DBT member d (0.5): left only, d = (0.5, 0.9)
        vp("d", L, CC, 0.4, 0.8, "dbt"), vp("d", L, MLO, 0.6, 1.0, "dbt"),
        # right breast: FFDM member a only, (0.1, 0.2)
        vp("a", R, CC, 0.1, 0.2),
    ]
    left, right = combine_classes(views, {"a": 0.3, "b": 0.2, "d": 0.5},
                                  {"ffdm": 1.0, "synthetic2d": 1.0, "dbt": 3.0})
    ffdm_left = ((0.3 * 0.3 + 0.2 * 0.7) / 0.5, (0.3 * 0.2 + 0.2 * 0.6) / 0.5)  # (0.46, 0.36)
    assert left.p_benign == pytest.approx((1 * ffdm_left[0] + 3 * 0.5) / 4)  # 0.49
    assert left.p_malignant == pytest.approx((1 * ffdm_left[1] + 3 * 0.9) / 4)  # 0.765
    assert left.classes == ("dbt", "ffdm")
    # DBT is absent on the right: FFDM alone, not pulled towards 0
    assert (right.p_benign, right.p_malignant) == pytest.approx((0.1, 0.2))
    assert right.classes == ("ffdm",)
    expected_members = {"a": (0.3, 0.2), "b": (0.7, 0.6), "d": (0.5, 0.9)}
    assert left.per_member.keys() == expected_members.keys()
    for name, pair in expected_members.items():
        assert left.per_member[name] == pytest.approx(pair)


def test_a_member_scoring_two_classes_reports_their_class_weighted_mean() -> None:
    """An FFDM member scores FFDM and synthetic 2D images of the same views."""
    views = [vp("a", L, CC, 0.2, 0.4), vp("a", L, CC, 0.6, 0.1, "synthetic2d")]
    (left,) = combine_classes(views, {"a": 1.0}, {"ffdm": 2.0, "synthetic2d": 1.0, "dbt": 1.0})
    expected = ((2 * 0.2 + 1 * 0.6) / 3, (2 * 0.4 + 1 * 0.1) / 3)  # (0.333, 0.3)
    assert (left.p_benign, left.p_malignant) == pytest.approx(expected)
    assert left.per_member["a"] == pytest.approx(expected)


def test_a_class_with_weight_zero_is_left_out_of_the_breast() -> None:
    views = [vp("a", L, CC, 0.2, 0.4), vp("a", L, CC, 0.6, 0.9, "synthetic2d"),
             vp("a", R, MLO, 0.5, 0.5, "synthetic2d")]
    breasts = combine_classes(views, {"a": 1.0}, {"ffdm": 1.0, "synthetic2d": 0.0, "dbt": 1.0})
    assert [(b.laterality, b.p_malignant) for b in breasts] == [(L, 0.4)]  # right: nothing counted


def test_a_class_without_a_weight_is_an_error() -> None:
    with pytest.raises(ScoringError, match="TRIAGE_CLASS_WEIGHTS"):
        combine_classes([vp("a", L, CC, 0.2, 0.4, "dbt")], {"a": 1.0}, {"ffdm": 1.0})


def test_default_class_weights_are_the_papers_equal_multimodal_average() -> None:
    weights = load_settings().class_weights
    assert set(weights) == set(CLASS_WEIGHT_CLASSES) == {c.value for c in SCORABLE_CLASSES}
    assert len(set(weights.values())) == 1 and next(iter(weights.values())) > 0


@pytest.mark.parametrize(("weights", "fragment"), [
    ({"ffdm": 1, "synthetic2d": 1, "dbt": 1, "mri": 1}, "unknown image class(es) mri"),
    ({"ffdm": 1, "dbt": 1}, "no weight for synthetic2d"),
    ({"ffdm": -0.5, "synthetic2d": 1, "dbt": 1}, "zero or positive"),
    ({"ffdm": 0, "synthetic2d": 0, "dbt": 0}, "every class weight is 0"),
])
def test_bad_class_weights_fail_at_start_up_naming_the_setting(
    weights: dict[str, float], fragment: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(class_weights=weights)
    assert "TRIAGE_CLASS_WEIGHTS" in str(info.value) and fragment in str(info.value)


def test_class_weights_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIAGE_CLASS_WEIGHTS", '{"ffdm": 2, "synthetic2d": 0, "dbt": 1}')
    assert load_settings().class_weights == {"ffdm": 2.0, "synthetic2d": 0.0, "dbt": 1.0}
