"""Drift at a glance: does a week's score distribution depart from the site's reference period?

No ground truth is needed: only the exam scores the product already stored. Each ISO week
(Monday to Sunday, UTC) of the history is compared with the reference period (by default the
first ``reference_weeks`` weeks that have scores; a site may name its own period).

The test: the two-sample Kolmogorov-Smirnov test (``scipy.stats.ks_2samp``, exact or
asymptotic as scipy chooses). Why this one:

* it makes no assumption about the shape of the score distribution (triage scores are
  bounded, skewed and often bimodal: a t-test on means would miss a change of shape);
* it reacts to a shift anywhere in the distribution (location, spread, a new mode), which is
  what a new scanner, a changed acquisition protocol or a changed population looks like;
* its statistic ``D`` (the largest gap between the two empirical CDFs, 0..1) is easy to
  show and to explain.

A week is flagged when ``p < alpha`` (default 0.01, one test per week: with 52 weeks a
year about one false flag every two years at that level) and it has at least
``min_exams`` scores (default 20; fewer give the test little power and noisy flags).
A flag is a reason to look (scanner change? software update? case mix?), not a verdict.

Pure functions over plain numbers: the history query (``triage.db``) feeds them, the
dashboard shows the result.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from scipy.stats import ks_2samp

DEFAULT_ALPHA = 0.01
DEFAULT_MIN_EXAMS = 20
DEFAULT_REFERENCE_WEEKS = 4


@dataclass(frozen=True)
class WeekDrift:
    """One week compared with the reference period."""

    week_start: date  # Monday (UTC)
    n: int
    median: float
    statistic: float | None  # KS D; None when the week was not tested
    p_value: float | None
    flagged: bool
    note: str  # why not tested, or what was found


@dataclass(frozen=True)
class DriftReport:
    reference_start: date | None
    reference_end: date | None  # exclusive
    reference_n: int
    alpha: float
    min_exams: int
    weeks: tuple[WeekDrift, ...]

    @property
    def flagged_weeks(self) -> list[date]:
        return [w.week_start for w in self.weeks if w.flagged]


def week_start(at: datetime) -> date:
    """The Monday (UTC date) of the ISO week ``at`` falls in."""
    day = at.date()
    return day - timedelta(days=day.weekday())


def weekly(scores: Iterable[tuple[datetime, float]]) -> dict[date, list[float]]:
    """Scores grouped by the week they were scored in, weeks in order."""
    grouped: dict[date, list[float]] = {}
    for at, score in sorted(scores, key=lambda pair: pair[0]):
        grouped.setdefault(week_start(at), []).append(float(score))
    return grouped


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def detect_drift(scores: Iterable[tuple[datetime, float]], *,
                 reference: tuple[date, date] | None = None,
                 reference_weeks: int = DEFAULT_REFERENCE_WEEKS,
                 alpha: float = DEFAULT_ALPHA,
                 min_exams: int = DEFAULT_MIN_EXAMS) -> DriftReport:
    """Compare every week after the reference period with it (see the module docstring).

    ``reference``: [start, end) dates of the site's reference period; default the first
    ``reference_weeks`` weeks that have scores.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha}")
    weeks = weekly(scores)
    if not weeks:
        return DriftReport(None, None, 0, alpha, min_exams, ())
    if reference is None:
        first = list(weeks)[:max(1, reference_weeks)]
        reference = (first[0], first[-1] + timedelta(days=7))
    ref_start, ref_end = reference
    ref_scores = [s for w, values in weeks.items() if ref_start <= w < ref_end for s in values]
    out: list[WeekDrift] = []
    for start, values in weeks.items():
        median = _median(values)
        if ref_start <= start < ref_end:
            out.append(WeekDrift(start, len(values), median, None, None, False,
                                 "reference period"))
            continue
        if len(ref_scores) < min_exams:
            out.append(WeekDrift(start, len(values), median, None, None, False,
                                 f"reference period has {len(ref_scores)} scores; "
                                 f"need {min_exams}"))
            continue
        if len(values) < min_exams:
            out.append(WeekDrift(start, len(values), median, None, None, False,
                                 f"{len(values)} scores; need {min_exams} to test"))
            continue
        result = ks_2samp(values, ref_scores)
        statistic, p_value = float(result.statistic), float(result.pvalue)
        flagged = p_value < alpha
        note = (f"departs from the reference (KS D={statistic:.2f}, p={p_value:.2g})"
                if flagged else f"consistent with the reference (p={p_value:.2g})")
        out.append(WeekDrift(start, len(values), median, statistic, p_value, flagged, note))
    return DriftReport(ref_start, ref_end, len(ref_scores), alpha, min_exams, tuple(out))
