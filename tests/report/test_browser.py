"""The report in a real browser: Debian's Chromium, headless, offline."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from monitor.report import run_report_html
from tests.report.browser import CHART_STATE
from tests.report.conftest import DRIFTING, DROPPED, RUN_ID

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


def _open(page, url: str) -> list[dict]:  # type: ignore[no-untyped-def]
    page.goto(url)
    page.wait_for_selector("body[data-report-ready=true]", timeout=30_000)
    page.wait_for_function(
        "() => Array.from(document.querySelectorAll('.chart')).every(el => el.dataset.drawn === 'true' "
        "|| el.dataset.points === '0')",
        timeout=30_000,
    )
    return page.evaluate(CHART_STATE)


def test_report_file_draws_every_chart_offline_and_shows_the_faulty_clients(
    faulty_run, browser_page, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    page, log = browser_page
    with faulty_run.store.read_session() as session:
        report = tmp_path / "report.html"
        report.write_text(run_report_html(session, RUN_ID), encoding="utf-8")
    charts = _open(page, report.as_uri())

    assert log.errors == []
    assert log.foreign_requests == [], "the report must not fetch anything"
    ids = {c["id"] for c in charts}
    for section in ("chart-global", "chart-participation", "chart-fairness", "chart-drift-map",
                    "chart-divergence", "chart-privacy", "chart-timeline"):  # fmt: skip
        assert section in ids
    for chart in charts:
        assert chart["drawn"] and chart["points"] > 0 and chart["traces"] > 0, chart
        assert chart["marks"] > 0, f"{chart['id']} has no drawn marks"

    findings = page.locator("#findings-table tbody tr")
    drifting = page.locator(f'#findings-table tr[data-client="{DRIFTING}"]')
    assert "label_drift" in " ".join(drifting.all_inner_texts())
    assert page.locator(f'#findings-table tr[data-client="{DROPPED}"]').count() >= 1
    assert findings.first.locator(".sev").inner_text() in ("critical", "warning")
    # The finding links to the client's own section, whose charts drew.
    drifting.first.locator("a").click()
    assert page.evaluate("location.hash") == f"#client-{DRIFTING}"
    assert page.locator(f"#client-{DRIFTING} .main-svg").count() >= 3

    heat_rows = page.evaluate("document.getElementById('chart-drift-map').data[0].y")
    assert DRIFTING in heat_rows[:2], heat_rows
    # The drift map's row for the drifting client is coloured over the threshold after the onset.
    z = page.evaluate(f"(() => {{ const d = document.getElementById('chart-drift-map').data[0];"
                      f" return d.z[d.y.indexOf('{DRIFTING}')]; }})()")  # fmt: skip
    assert max(v for v in z if v is not None) >= 1.0

    # A real mouse over the drifting client's last cell: the hover names client, round and value.
    page.locator("#chart-drift-map").scroll_into_view_if_needed()
    rounds = page.evaluate("document.getElementById('chart-drift-map').data[0].x")
    target = rounds[-3]  # clear of the mode bar in the top right corner
    x, y = page.evaluate(
        "([r, c]) => { const el = document.getElementById('chart-drift-map'), L = el._fullLayout,"
        " b = el.getBoundingClientRect();"
        " return [b.left + L._size.l + L.xaxis.d2p(r), b.top + L._size.t + L.yaxis.d2p(c)]; }",
        [target, DRIFTING],
    )
    page.mouse.move(x, y)
    page.wait_for_function(
        "document.querySelector('#chart-drift-map .hoverlayer').textContent.length > 0",
        timeout=5_000,
    )
    hover = page.evaluate("document.querySelector('#chart-drift-map .hoverlayer').textContent")
    assert (
        f"client {DRIFTING}" in hover and f"round {target}" in hover and "drift ratio" in hover
    ), hover

    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    assert (tmp_path / "report.png").stat().st_size > 50_000


def test_served_report_and_index_page_in_the_browser(faulty_run, browser_page) -> None:  # type: ignore[no-untyped-def]
    page, log = browser_page
    page.goto(f"{faulty_run.url}/")
    link = page.locator(f'a[href="/api/v1/runs/{RUN_ID}/report"]')
    assert link.count() == 1
    link.click()
    charts = _open(page, page.url)
    assert log.errors == [] and log.foreign_requests == []
    assert all(c["drawn"] for c in charts)
    assert (
        httpx.get(f"{faulty_run.url}/api/v1/runs/{RUN_ID}/report")
        .headers["content-type"]
        .startswith("text/html")
    )
