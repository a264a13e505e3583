"""The dashboard's SVG charts: valid SVG whose shapes carry the numbers they draw."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from triage.api.plots import box_plot, five_numbers, rate_lines

NS = {"s": "http://www.w3.org/2000/svg"}


def test_five_numbers_are_min_quartiles_median_max() -> None:
    assert five_numbers([0.4, 0.0, 1.0, 0.2, 0.6]) == (0.0, 0.2, 0.4, 0.6, 1.0)
    assert five_numbers([0.3]) == (0.3, 0.3, 0.3, 0.3, 0.3)
    assert five_numbers([0.0, 1.0])[2] == pytest.approx(0.5)


def test_box_plot_draws_one_box_per_group_with_its_median_and_highlights() -> None:
    svg = box_plot({"2026-W01": [0.1, 0.2, 0.3], "2026-W02": [0.7, 0.8, 0.9], "empty": []},
                   "scores per week", highlight=["2026-W02"])
    root = ET.fromstring(svg)
    boxes = root.findall(".//s:g[@class='box']", NS)
    assert [b.get("data-group") for b in boxes] == ["2026-W01", "2026-W02"]
    assert [float(b.get("data-median") or 0) for b in boxes] == [0.2, 0.8]
    colours = [b.find("s:rect", NS).get("stroke") for b in boxes]  # type: ignore[union-attr]
    assert colours[0] != colours[1] and colours[1] == "#d62728"
    assert root.find("s:title", NS).text == "scores per week"  # type: ignore[union-attr]


def test_labels_are_escaped_and_empty_charts_say_so() -> None:
    svg = box_plot({"<script>": [0.5]}, "t")
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    assert "no scores" in box_plot({}, "t") and "no data" in rate_lines({}, "t")


def test_rate_lines_draw_one_polyline_per_series_over_shared_x_labels() -> None:
    svg = rate_lines({"HIGH": [("W1", 0.1), ("W2", 0.2)], "NOT TRIAGED": [("W1", 0.9),
                                                                          ("W2", 0.8)]}, "rates")
    root = ET.fromstring(svg)
    lines = root.findall(".//s:polyline", NS)
    assert [line.get("data-series") for line in lines] == ["HIGH", "NOT TRIAGED"]
    points = [p.split(",") for p in (lines[0].get("points") or "").split()]
    assert len(points) == 2 and float(points[0][1]) > float(points[1][1])  # 0.2 is higher up
