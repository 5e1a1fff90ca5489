"""Geometry of the usage page's bar chart, rendered as inline SVG by the template (no JavaScript)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from billing.selectors import DayUsage

WIDTH = 720
HEIGHT = 220
_LEFT = 40
_RIGHT = 8
_TOP = 12
_BOTTOM = 30
# 13 user units: at the narrowest the chart is drawn (34rem, below which it scrolls) that is ~10 px.
_FONT_SIZE = 13


@dataclass(frozen=True)
class Bar:
    day: dt.date
    x: float
    width: float
    y: float
    height: float
    byok_y: float
    byok_height: float
    messages: int
    byok_messages: int
    label: str  # shown under every few bars
    label_x: float
    label_anchor: str


@dataclass(frozen=True)
class Gridline:
    y: float
    value: int


@dataclass(frozen=True)
class BarChart:
    width: int
    height: int
    plot_left: int
    plot_bottom: float
    bars: tuple[Bar, ...]
    gridlines: tuple[Gridline, ...]
    total: int
    font_size: int


def _nice_ceiling(value: int) -> int:
    """The smallest of 1, 2, 5 × 10^n that is at least `value`."""
    step = 1
    while True:
        for factor in (1, 2, 5):
            if step * factor >= value:
                return step * factor
        step *= 10


def bar_chart(*, days: Sequence[DayUsage]) -> BarChart:
    """Messages per day (plan messages, with BYOK messages stacked on top)."""
    top = _nice_ceiling(max((d.messages + d.byok_messages for d in days), default=0) or 1)
    plot_height = HEIGHT - _TOP - _BOTTOM
    plot_bottom = HEIGHT - _BOTTOM
    slot = (WIDTH - _LEFT - _RIGHT) / max(1, len(days))
    # About six labels whatever the span: 7 days label each day, 90 days every 15th.
    every = max(1, -(-len(days) // 6))
    bars = []
    for index, day in enumerate(days):
        height = plot_height * day.messages / top
        byok_height = plot_height * day.byok_messages / top
        last = index == len(days) - 1
        label = (
            f"{day.day:%b} {day.day.day}" if (index % every == 0 and index < len(days) - every // 2 - 1) or last else ""
        )
        x = _LEFT + index * slot + slot * 0.15
        bars.append(
            Bar(
                day=day.day,
                x=round(x, 2),
                width=round(slot * 0.7, 2),
                y=round(plot_bottom - height, 2),
                height=round(height, 2),
                byok_y=round(plot_bottom - height - byok_height, 2),
                byok_height=round(byok_height, 2),
                messages=day.messages,
                byok_messages=day.byok_messages,
                label=label,
                # The last label ends at its bar so that it is not cut off at the chart's edge.
                label_x=round(x + slot * 0.7 if last else x, 2),
                label_anchor="end" if last else "start",
            )
        )
    values = (0, top // 2, top) if top % 2 == 0 else (0, top)
    gridlines = tuple(Gridline(y=round(plot_bottom - plot_height * value / top, 2), value=value) for value in values)
    return BarChart(
        width=WIDTH,
        height=HEIGHT,
        plot_left=_LEFT,
        plot_bottom=plot_bottom,
        bars=tuple(bars),
        gridlines=gridlines,
        total=sum(d.messages for d in days),
        font_size=_FONT_SIZE,
    )
