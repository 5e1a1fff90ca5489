"""Headless Debian Chromium for the browser tests, and axe-core (pinned, from npm) to audit its pages.

Chromium and its driver come from Debian (installed here with apt-get when missing and we are root);
axe-core is installed by `npm` (tests/npm_clients.py) into the git-ignored `.clients/` folder on first use and injected into
each page through Selenium, so nothing is fetched by the browser. Without npm the accessibility
tests skip with a reason, except in CI (`CI` or `REQUIRE_SERVICES=1` set), where that is a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.npm_clients import install_npm_client

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
AXE_CORE_VERSION = "4.14.1"


def required_here() -> bool:
    """CI must run what a developer's machine may skip."""
    return bool(os.environ.get("CI")) or os.environ.get("REQUIRE_SERVICES") == "1"


def skip_or_fail(reason: str) -> None:
    if required_here():
        pytest.fail(f"{reason} (required because CI or REQUIRE_SERVICES=1 is set)")
    pytest.skip(reason)


def chromium_missing_reason() -> str | None:
    """None when Chromium and its driver are there, installing them first if we can."""
    if not CHROMIUM.exists():
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            return "Chromium is not installed at /usr/bin/chromium and apt-get is not usable here"
        try:
            subprocess.run(
                ["apt-get", "install", "-y", "--no-install-recommends", "chromium", "chromium-driver"],
                check=True,
                capture_output=True,
                timeout=900,
            )
        except (subprocess.SubprocessError, OSError) as exc:
            return f"Chromium is missing and `apt-get install chromium chromium-driver` failed: {exc}"
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        return "Chromium or chromedriver is missing (/usr/bin/chromium, /usr/bin/chromedriver)"
    return None


@contextmanager
def chromium(*, width: int = 1280, height: int = 1400) -> Iterator[Any]:
    """A headless Chromium WebDriver that never downloads a browser or a driver."""
    reason = chromium_missing_reason()
    if reason:
        skip_or_fail(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not look for browsers or drivers online
    profile = tempfile.mkdtemp(prefix="wm-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-dev-shm-usage",
        "--no-first-run",
        f"--window-size={width},{height}",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_script_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def set_viewport(driver: Any, *, width: int, height: int = 900) -> None:
    """Make the page's layout viewport exactly `width` CSS pixels wide, whatever the window chrome."""
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        # mobile=False: a phone browser would zoom out to fit a too-wide page and hide the overflow.
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
    )


def axe_core_source() -> str:
    """axe.min.js at the pinned version, installed with npm into .clients/ on first use."""
    folder = install_npm_client("axe-core", {"axe-core": AXE_CORE_VERSION}, provides="axe-core/axe.min.js")
    return (folder / "node_modules" / "axe-core" / "axe.min.js").read_text()


@dataclass(frozen=True)
class Violation:
    page: str
    width: int
    rule: str
    impact: str | None
    help: str
    targets: tuple[str, ...]

    def __str__(self) -> str:
        where = ", ".join(self.targets[:4]) + (" …" if len(self.targets) > 4 else "")
        return f"{self.page} @ {self.width}px: {self.rule} ({self.impact}): {self.help} -> {where}"


def run_axe(driver: Any, *, source: str, page: str, width: int) -> list[Violation]:
    """Every axe-core violation on the loaded page (all rules axe enables by default)."""
    if not driver.execute_script("return typeof window.axe === 'object'"):
        driver.execute_script(source)
    results = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document, {resultTypes: ['violations']})"
        "  .then(r => done(r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,"
        "                                       targets: v.nodes.map(n => n.target.join(' '))}))))"
        "  .catch(e => done([{id: 'axe-error', impact: 'critical', help: String(e), targets: []}]));"
    )
    return [
        Violation(page=page, width=width, rule=v["id"], impact=v["impact"], help=v["help"], targets=tuple(v["targets"]))
        for v in results
    ]


def horizontal_overflow(driver: Any, *, width: int) -> int:
    """How many CSS pixels the document is wider than `width` (0 when nothing scrolls sideways)."""
    return int(driver.execute_script("return document.documentElement.scrollWidth")) - min(
        width, int(driver.execute_script("return window.innerWidth"))
    )


def boxes_scrolling_sideways(driver: Any) -> list[str]:
    """Boxes on the page whose content is wider than they are (a table scrolling inside its card).

    A <select> list box whose options are wider than it is does not count (the control's own scrolling),
    nor does a deliberate scroll region a keyboard can reach and a screen reader can name (tabindex=0
    plus aria-label/aria-labelledby): a code snippet or a chart, content WCAG 1.4.10 lets keep its
    two-dimensional layout. Tables are not exempt: they stack."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('body *:not(select):not(option)')).filter(el => {"
        "  const style = getComputedStyle(el);"
        "  const region = el.tagName !== 'TABLE' && el.getAttribute('tabindex') === '0' &&"
        "                 (el.hasAttribute('aria-label') || el.hasAttribute('aria-labelledby'));"
        "  return !region && ['auto', 'scroll'].includes(style.overflowX) && el.scrollWidth > el.clientWidth + 1;"
        "}).map(el => el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') +"
        "            (el.className && typeof el.className === 'string' ? '.' + el.className.trim().split(/\\s+/).join('.') : ''));"
    )


def elements_past_right_edge(driver: Any, *, width: int) -> list[str]:
    """The innermost elements that reach past `width` CSS pixels: where a sideways scroll comes from."""
    return driver.execute_script(
        "const w = arguments[0];"
        "const wide = Array.from(document.querySelectorAll('body *')).filter(el => el.getBoundingClientRect().right > w + 1);"
        "return wide.filter(el => !wide.some(other => other !== el && el.contains(other))).slice(0, 5)"
        "  .map(el => el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') +"
        "              (typeof el.className === 'string' && el.className.trim() ? '.' + el.className.trim().split(/\\s+/).join('.') : ''));",
        width,
    )
