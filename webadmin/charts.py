"""Charts drawn on the server as SVG geometry (no script, no external assets)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Bar:
    """One bar of a chart, in SVG user units."""

    x: float
    y: float
    width: float
    height: float
    label: str
    value: float
    text: str


@dataclass(frozen=True)
class BarChart:
    """A vertical bar chart ready for ``templates/_chart.html``."""

    width: int
    height: int
    bars: list[Bar]
    max_value: float
    baseline: float
    title: str


def bar_chart(points: list[tuple[str, float]], *, title: str, width: int = 960,
              height: int = 220, value_format: str = "{:.0f}") -> BarChart:
    """Lay out ``points`` (label, value) as bars that fill ``width`` x ``height``."""
    top, bottom, left, right = 18.0, 34.0, 8.0, 8.0
    plot_h = height - top - bottom
    plot_w = width - left - right
    top_value = max((v for _, v in points), default=0) or 1
    slot = plot_w / max(1, len(points))
    bar_w = max(2.0, slot * 0.7)
    bars = []
    for i, (label, value) in enumerate(points):
        h = plot_h * (value / top_value)
        bars.append(Bar(x=round(left + i * slot + (slot - bar_w) / 2, 1),
                        y=round(top + plot_h - h, 1), width=round(bar_w, 1), height=round(h, 1),
                        label=label, value=value, text=value_format.format(value)))
    return BarChart(width, height, bars, top_value, top + plot_h, title)
