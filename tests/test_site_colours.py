"""The site's non-text colours meet WCAG 2.2's 3:1 (1.4.11): the focus ring on every page background,
and the usage chart's two bar colours against the card and against each other (they are stacked)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

CSS = Path(__file__).resolve().parent.parent / "templates" / "static" / "css" / "site.css"
USAGE = Path(__file__).resolve().parent.parent / "templates" / "billing" / "usage.html"


def custom_properties() -> dict[str, str]:
    return dict(re.findall(r"--([a-z-]+):\s*(#[0-9a-fA-F]{6})\s*;", CSS.read_text()))


def luminance(hex_colour: str) -> float:
    channels = [int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    r, g, b = (c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(a: str, b: str) -> float:
    light, dark = sorted((luminance(a), luminance(b)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def test_contrast_is_computed_as_wcag_defines_it() -> None:
    assert contrast("#000000", "#ffffff") == pytest.approx(21.0)
    assert contrast("#f59e0b", "#ffffff") == pytest.approx(2.15, abs=0.01)  # the old focus ring


@pytest.mark.parametrize("background", ["surface", "bg"])
@pytest.mark.parametrize("colour", ["focus", "chart-counted", "chart-byok"])
def test_focus_and_chart_colours_reach_3_to_1(colour: str, background: str) -> None:
    colours = custom_properties()
    assert contrast(colours[colour], colours[background]) >= 3.0


def test_the_stacked_bars_differ_by_3_to_1_and_the_chart_uses_them() -> None:
    colours = custom_properties()
    assert contrast(colours["chart-counted"], colours["chart-byok"]) >= 3.0
    usage = USAGE.read_text()
    assert 'class="usage-chart__counted"' in usage and 'class="usage-chart__byok"' in usage
    assert not re.search(r"<rect[^>]*\bfill=", usage), "bar colours come from site.css, not the template"
    assert ":focus-visible { outline: 3px solid var(--focus)" in CSS.read_text()
