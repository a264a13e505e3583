"""Drift at a glance: a week whose score distribution departs from the reference period is
flagged (two-sample Kolmogorov-Smirnov), without ground truth."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import numpy as np
import pytest
from scipy.stats import ks_2samp

from triage.drift import detect_drift, week_start, weekly

MONDAY = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)  # a Monday


def _week(k: int, values: np.ndarray) -> list[tuple[datetime, float]]:
    start = MONDAY + timedelta(weeks=k)
    return [(start + timedelta(hours=int(i % 120)), float(v)) for i, v in enumerate(values)]


def _scores(shift_week: int | None = None, n: int = 60, weeks: int = 8) -> list[tuple[datetime, float]]:
    rng = np.random.default_rng(0)
    out: list[tuple[datetime, float]] = []
    for k in range(weeks):
        a, b = (5.0, 2.0) if k == shift_week else (2.0, 5.0)
        out += _week(k, rng.beta(a, b, n))
    return out


def test_weeks_start_on_monday_utc() -> None:
    assert week_start(datetime(2026, 1, 11, 23, 59, tzinfo=UTC)) == date(2026, 1, 5)
    assert week_start(datetime(2026, 1, 12, 0, 0, tzinfo=UTC)) == date(2026, 1, 12)
    assert list(weekly([(MONDAY + timedelta(days=8), 0.2), (MONDAY, 0.1)])) == [
        date(2026, 1, 5), date(2026, 1, 12)]


def test_a_shifted_week_is_flagged_and_the_others_are_not() -> None:
    report = detect_drift(_scores(shift_week=6))
    assert report.reference_start == date(2026, 1, 5) and report.reference_n == 4 * 60
    assert report.flagged_weeks == [date(2026, 1, 5) + timedelta(weeks=6)]
    shifted = next(w for w in report.weeks if w.flagged)
    assert shifted.statistic is not None and shifted.statistic > 0.5
    assert [w.note for w in report.weeks[:4]] == ["reference period"] * 4


def test_the_statistic_is_scipys_two_sample_ks_against_the_reference() -> None:
    scores = _scores(shift_week=5)
    report = detect_drift(scores)
    weeks = weekly(scores)
    ref = [s for w in list(weeks)[:4] for s in weeks[w]]
    week5 = list(weeks)[5]
    expected = ks_2samp(weeks[week5], ref)
    got = next(w for w in report.weeks if w.week_start == week5)
    assert got.statistic == pytest.approx(float(expected.statistic))
    assert got.p_value == pytest.approx(float(expected.pvalue))


def test_small_weeks_are_not_tested_and_say_why() -> None:
    scores = _scores(weeks=4) + _week(5, np.full(5, 0.99))
    report = detect_drift(scores)
    last = report.weeks[-1]
    assert not last.flagged and last.statistic is None and "need 20" in last.note


def test_a_site_reference_period_is_used_when_given() -> None:
    scores = _scores(shift_week=0)
    default = detect_drift(scores)
    assert date(2026, 1, 5) not in default.flagged_weeks  # inside the default reference
    site = detect_drift(scores, reference=(date(2026, 1, 12), date(2026, 2, 2)))
    assert site.flagged_weeks == [date(2026, 1, 5)]
