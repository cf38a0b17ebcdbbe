"""Debian's Chromium driven by Playwright (never ``playwright install``: it would download a browser).

``browser_page()`` opens a page that records console errors, uncaught
exceptions and every request that is not a local file or loopback URL (the
report must work offline). Without Chromium or Playwright the test is skipped
with the reason, and fails under CI, where scripts/test.sh installs both.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pytest

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]  # fmt: skip


def _missing(message: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@dataclass
class PageLog:
    errors: list[str] = field(default_factory=list)
    foreign_requests: list[str] = field(default_factory=list)


@pytest.fixture(scope="package")
def chromium() -> Iterator[Any]:
    executable = shutil.which("chromium")
    if executable is None:
        _missing(
            "chromium is not installed (Debian package chromium; scripts/test.sh installs it as root)"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed (pip install -e '.[test]')")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def browser_page(chromium: Any) -> Iterator[tuple[Any, PageLog]]:
    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    log = PageLog()
    page.on(
        "console",
        lambda m: log.errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None,
    )
    page.on("pageerror", lambda exc: log.errors.append(f"uncaught: {exc}"))

    def request(req: Any) -> None:
        parts = urlsplit(req.url)
        if parts.scheme not in ("file", "data", "blob", "about") and parts.hostname not in (
            "127.0.0.1",
            "localhost",
        ):
            log.foreign_requests.append(req.url)

    page.on("request", request)
    try:
        yield page, log
    finally:
        context.close()


CHART_STATE = """() => Array.from(document.querySelectorAll('.chart')).map(el => ({
  id: el.id,
  points: Number(el.dataset.points || 0),
  drawn: el.dataset.drawn === 'true',
  traces: el.data ? el.data.length : 0,
  marks: el.querySelectorAll('.scatterlayer .trace path.js-line, .scatterlayer .point, .barlayer .point, '
                             + '.heatmaplayer image, .scatterlayer .trace .fills path').length,
}))"""
