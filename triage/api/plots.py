"""Small server-rendered SVG charts for the dashboard (no JavaScript, no plotting library).

Hand-written because the charts are three simple shapes (box plots per group, lines of
rates over time) and the product should not pull a plotting stack into the API process for
them; every chart is a pure function of plain numbers to an SVG string, so it is tested by
parsing the SVG.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape

WIDTH, HEIGHT = 640, 240
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 44, 12, 12, 56
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf")


def _quantile(ordered: Sequence[float], q: float) -> float:
    if len(ordered) == 1:
        return ordered[0]
    pos = q * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def five_numbers(values: Sequence[float]) -> tuple[float, float, float, float, float]:
    """min, first quartile, median, third quartile, max (linear interpolation)."""
    ordered = sorted(values)
    return (ordered[0], _quantile(ordered, 0.25), _quantile(ordered, 0.5),
            _quantile(ordered, 0.75), ordered[-1])


def _frame(title: str, body: list[str]) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
            f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}">'
            f"<title>{escape(title)}</title>" + "".join(body) + "</svg>")


def _y(value: float) -> float:
    """Plot y of a value in [0, 1]."""
    span = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
    return MARGIN_TOP + (1.0 - max(0.0, min(1.0, value))) * span


def _axes(ticks: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0), fmt: str = "{:.2f}") -> list[str]:
    out = [f'<line x1="{MARGIN_LEFT}" y1="{_y(0):.1f}" x2="{WIDTH - MARGIN_RIGHT}" '
           f'y2="{_y(0):.1f}" stroke="#444"/>',
           f'<line x1="{MARGIN_LEFT}" y1="{_y(1):.1f}" x2="{MARGIN_LEFT}" y2="{_y(0):.1f}" '
           'stroke="#444"/>']
    for t in ticks:
        out.append(f'<text x="{MARGIN_LEFT - 4}" y="{_y(t) + 4:.1f}" font-size="10" '
                   f'text-anchor="end">{fmt.format(t)}</text>')
    return out


def box_plot(groups: Mapping[str, Sequence[float]], title: str,
             highlight: Sequence[str] = ()) -> str:
    """One box (quartiles, median line, whiskers to min/max) per group of scores in [0, 1],
    in the order given; groups in ``highlight`` are drawn in red (e.g. drifted weeks)."""
    body = _axes()
    labels = [label for label, values in groups.items() if values]
    if not labels:
        body.append(f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle">no scores'
                    "</text>")
        return _frame(title, body)
    step = (WIDTH - MARGIN_LEFT - MARGIN_RIGHT) / len(labels)
    for i, label in enumerate(labels):
        low, q1, median, q3, high = five_numbers(groups[label])
        x = MARGIN_LEFT + step * (i + 0.5)
        half = max(2.0, min(18.0, step * 0.3))
        colour = "#d62728" if label in highlight else "#1f77b4"
        n = len(groups[label])
        body += [
            f'<g class="box" data-group="{escape(label)}" data-n="{n}" '
            f'data-median="{median:.4f}">',
            f'<line x1="{x:.1f}" y1="{_y(high):.1f}" x2="{x:.1f}" y2="{_y(low):.1f}" '
            f'stroke="{colour}"/>',
            f'<rect x="{x - half:.1f}" y="{_y(q3):.1f}" width="{2 * half:.1f}" '
            f'height="{max(1.0, _y(q1) - _y(q3)):.1f}" fill="{colour}" fill-opacity="0.25" '
            f'stroke="{colour}"/>',
            f'<line x1="{x - half:.1f}" y1="{_y(median):.1f}" x2="{x + half:.1f}" '
            f'y2="{_y(median):.1f}" stroke="{colour}" stroke-width="2"/>',
            f'<text x="{x:.1f}" y="{HEIGHT - MARGIN_BOTTOM + 14}" font-size="9" '
            f'text-anchor="end" transform="rotate(-40 {x:.1f} {HEIGHT - MARGIN_BOTTOM + 14})">'
            f"{escape(label)}</text>",
            "</g>",
        ]
    return _frame(title, body)


def rate_lines(series: Mapping[str, Sequence[tuple[str, float]]], title: str) -> str:
    """One line per series of (x label, rate in [0, 1]) points sharing the x labels, with a
    legend (e.g. the weekly rate of each worklist category)."""
    body = _axes(fmt="{:.0%}")
    xs = list(dict.fromkeys(x for points in series.values() for x, _ in points))
    if not xs:
        body.append(f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle">no data'
                    "</text>")
        return _frame(title, body)
    step = (WIDTH - MARGIN_LEFT - MARGIN_RIGHT) / max(1, len(xs))
    position = {x: MARGIN_LEFT + step * (i + 0.5) for i, x in enumerate(xs)}
    for k, (name, points) in enumerate(series.items()):
        colour = PALETTE[k % len(PALETTE)]
        coords = " ".join(f"{position[x]:.1f},{_y(rate):.1f}" for x, rate in points)
        body.append(f'<polyline class="series" data-series="{escape(name)}" points="{coords}" '
                    f'fill="none" stroke="{colour}" stroke-width="2"/>')
        body.append(f'<text x="{WIDTH - MARGIN_RIGHT - 4}" y="{MARGIN_TOP + 12 * (k + 1)}" '
                    f'font-size="10" text-anchor="end" fill="{colour}">{escape(name)}</text>')
    for x in xs:
        body.append(f'<text x="{position[x]:.1f}" y="{HEIGHT - MARGIN_BOTTOM + 14}" '
                    f'font-size="9" text-anchor="end" '
                    f'transform="rotate(-40 {position[x]:.1f} {HEIGHT - MARGIN_BOTTOM + 14})">'
                    f"{escape(x)}</text>")
    return _frame(title, body)
