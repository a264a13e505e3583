"""View -> breast -> exam aggregation and priority categories. Plain numbers in and out.

Rules (issue 5, the papers' rule):
* per member and breast: the mean of that breast's CC and MLO view probabilities (a breast
  with only one scored view uses that view and is reported as such);
* per breast across members: weighted mean with the configured ensemble weights,
  renormalised over the members that produced that breast (a member left out does not
  drag the mean towards zero); a member without a benign output (``p_benign`` None: the
  all-convolutional whole-image classifier) is left out of the benign mean only, and a
  breast no member estimates benign for has ``p_benign`` None;
* per breast across image classes (FFDM, synthetic 2D, DBT; ``combine_classes``): the
  members are first combined within each class as above, then the classes by
  ``TRIAGE_CLASS_WEIGHTS``, renormalised over the classes that breast has (an exam with
  FFDM only is scored on FFDM as if the other classes were not configured);
* exam triage score: the maximum malignant probability over breasts;
* category: the first configured level whose ``min_score`` the score reaches; ``NOT
  TRIAGED`` whenever a member's weights are not verified published weights; an exam that
  lacks coverage (``coverage_gaps``: a breast or standard view not scored, a view that
  failed, a member that failed) never gets a priority level: ``NOT TRIAGED`` with the gaps
  as the reason, or ``PARTIAL`` when the site's policy says so.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from triage.config import PriorityLevel
from triage.errors import ScoringError
from triage.results import weighted_mean
from triage.vocabulary import NOT_TRIAGED, PARTIAL, Laterality, View


@dataclass(frozen=True)
class ViewProbability:
    member: str
    laterality: Laterality
    view: View
    p_benign: float | None  # None: the member does not estimate benign findings
    p_malignant: float
    image_class: str = "ffdm"  # of the scored image: ffdm, synthetic2d or dbt


@dataclass(frozen=True)
class BreastProbability:
    laterality: Laterality
    p_benign: float | None
    p_malignant: float
    per_member: dict[str, tuple[float | None, float]]
    views_used: tuple[View, ...]
    classes: tuple[str, ...] = ()  # image classes combined (combine_classes only)


@dataclass(frozen=True)
class Category:
    name: str
    reason: str | None  # why NOT TRIAGED, else None


MemberBreast = tuple[float | None, float, tuple[View, ...]]  # benign, malignant, views used



def member_breasts(
    views: Sequence[ViewProbability],
) -> dict[tuple[str, Laterality], MemberBreast]:
    """Per (member, breast): mean benign and malignant over the breast's scored views.

    Several probabilities for the same (member, breast, view) (e.g. test-time augmentation
    samples already averaged upstream) are not expected here: one per view.
    """
    grouped: dict[tuple[str, Laterality], dict[View, tuple[float | None, float]]] = {}
    for v in views:
        per_view = grouped.setdefault((v.member, v.laterality), {})
        if v.view in per_view:
            raise ScoringError(
                f"member {v.member}: two scores for {v.laterality.value}-{v.view.value}; "
                "the pipeline must pass one chosen image per view"
            )
        per_view[v.view] = (v.p_benign, v.p_malignant)
    out = {}
    for key, per_view in grouped.items():
        used = tuple(sorted(per_view, key=lambda x: x.value))
        benign = weighted_mean([(1.0, per_view[x][0]) for x in used])
        malignant = sum(per_view[x][1] for x in used) / len(used)
        out[key] = (benign, malignant, used)
    return out


def combine_members(
    views: Sequence[ViewProbability], weights: Mapping[str, float]
) -> list[BreastProbability]:
    """Per-breast ensemble probabilities (weighted mean over the members that scored it)."""
    per_member = member_breasts(views)
    breasts: list[BreastProbability] = []
    for lat in (Laterality.LEFT, Laterality.RIGHT):
        members = {m: value for (m, side), value in per_member.items() if side is lat}
        if not members:
            continue
        unknown = set(members) - set(weights)
        if unknown:
            raise ScoringError(f"no ensemble weight configured for member(s) {sorted(unknown)}")
        total = sum(weights[m] for m in members)
        benign = weighted_mean([(weights[m], members[m][0]) for m in members])
        malignant = sum(weights[m] * members[m][1] for m in members) / total
        used = {v for m in members for v in members[m][2]}
        views_used = tuple(sorted(used, key=lambda x: x.value))
        breasts.append(BreastProbability(
            laterality=lat, p_benign=benign, p_malignant=malignant,
            per_member={m: (b, mal) for m, (b, mal, _) in members.items()}, views_used=views_used,
        ))
    return breasts


def _class_mean(pairs: Mapping[str, tuple[float | None, float]],
                class_weights: Mapping[str, float]) -> tuple[float | None, float]:
    """Class-weighted mean of (benign, malignant) pairs; one class: that pair, unchanged."""
    if len(pairs) == 1:
        return next(iter(pairs.values()))
    total = sum(class_weights[c] for c in pairs)
    return (weighted_mean([(class_weights[c], p[0]) for c, p in pairs.items()]),
            sum(class_weights[c] * p[1] for c, p in pairs.items()) / total)


def combine_classes(
    views: Sequence[ViewProbability], member_weights: Mapping[str, float],
    class_weights: Mapping[str, float],
) -> list[BreastProbability]:
    """Per-breast probabilities over image classes (Park et al.'s multimodal ensemble).

    1. Within each image class, :func:`combine_members` per breast (per member: mean of the
       breast's views; across members: ensemble weights renormalised over the members that
       scored it).
    2. Across classes, per breast: ``sum_c w_c p_c / sum_c w_c`` over the classes that breast
       has, ``w_c`` from ``class_weights``. A class with weight 0 is left out (its view scores
       are still reported); a breast left with no class of positive weight is not scored.
    3. ``per_member[m]``: the member's own number for the breast, the same class-weighted
       mean over the classes it scored there (a member of one class: its
       :func:`combine_members` value, as before).

    With views of one class only, the result equals :func:`combine_members`.
    """
    by_class: dict[str, list[ViewProbability]] = {}
    for v in views:
        by_class.setdefault(v.image_class, []).append(v)
    unknown = sorted(set(by_class) - set(class_weights))
    if unknown:
        raise ScoringError(f"no class weight configured for image class(es) {unknown} "
                           "(TRIAGE_CLASS_WEIGHTS)")
    per_class = {c: {b.laterality: b for b in combine_members(vs, member_weights)}
                 for c, vs in sorted(by_class.items()) if class_weights[c] > 0}
    breasts: list[BreastProbability] = []
    for lat in (Laterality.LEFT, Laterality.RIGHT):
        present = {c: side[lat] for c, side in per_class.items() if lat in side}
        if not present:
            continue
        benign, malignant = _class_mean(
            {c: (b.p_benign, b.p_malignant) for c, b in present.items()}, class_weights)
        members: dict[str, tuple[float | None, float]] = {}
        for name in dict.fromkeys(m for b in present.values() for m in b.per_member):
            members[name] = _class_mean(
                {c: b.per_member[name] for c, b in present.items() if name in b.per_member},
                class_weights)
        used = {v for b in present.values() for v in b.views_used}
        breasts.append(BreastProbability(
            laterality=lat, p_benign=benign, p_malignant=malignant, per_member=members,
            views_used=tuple(sorted(used, key=lambda x: x.value)), classes=tuple(present),
        ))
    return breasts


def exam_score(breasts: Sequence[BreastProbability]) -> float:
    if not breasts:
        raise ScoringError("no breast was scored, so there is no exam score")
    return max(b.p_malignant for b in breasts)


STANDARD_VIEWS: tuple[tuple[Laterality, View], ...] = (
    (Laterality.LEFT, View.CC), (Laterality.LEFT, View.MLO),
    (Laterality.RIGHT, View.CC), (Laterality.RIGHT, View.MLO),
)


def missing_views(scored: Iterable[tuple[Laterality, View]]) -> list[str]:
    """What a screening exam lacks among the four standard views, in words: a whole breast
    ("no right breast (R-CC, R-MLO)") or single views ("L-MLO not scored")."""
    have = set(scored)
    gaps: list[str] = []
    for lat, word in ((Laterality.LEFT, "left"), (Laterality.RIGHT, "right")):
        lacking = [v for v in (View.CC, View.MLO) if (lat, v) not in have]
        if len(lacking) == 2:
            gaps.append(f"no {word} breast scored ({lat.value}-CC, {lat.value}-MLO)")
        elif lacking:
            gaps.append(f"{lat.value}-{lacking[0].value} not scored")
    return gaps


def categorise(score: float, levels: Sequence[PriorityLevel], *, verified: bool,
               unverified_members: Sequence[str] = (), coverage_gaps: Sequence[str] = (),
               partial_category: bool = False) -> Category:
    """The worklist category for ``score``: NOT TRIAGED unless every member is verified;
    for an exam with coverage gaps NOT TRIAGED (or PARTIAL with ``partial_category``) with
    the gaps as the reason; else the first level the score reaches."""
    partial = "partial exam: " + "; ".join(coverage_gaps) if coverage_gaps else ""
    if not verified:
        names = ", ".join(unverified_members) or "one or more members"
        return Category(
            NOT_TRIAGED,
            f"weights of {names} are not verified published weights (uncalibrated, "
            "investigational): the score is shown to admins only"
            + (f"; {partial}" if partial else ""),
        )
    if coverage_gaps:
        return Category(PARTIAL if partial_category else NOT_TRIAGED, partial)
    for level in levels:
        if score >= level.min_score:
            return Category(level.name, None)
    raise ScoringError("priority levels do not cover score 0 (the last min_score must be 0)")
