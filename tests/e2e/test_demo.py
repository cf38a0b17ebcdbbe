"""``fedsentinel demo`` as a user runs it: a real process, real Prometheus/Alertmanager, the report in Chromium.

Shortened to 13 rounds (client c003's labels drift from round 10; the alert
needs 3 drifting rounds). Every process the demo starts must be gone when it
exits, after Ctrl-C (SIGINT) in ``--serve`` mode too.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.servers import ALERTMANAGER_BIN, PROMETHEUS_BIN, _binary
from tests.report.browser import CHART_STATE

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]

DRIFTING = "c003"
ROUNDS = "13"


def _demo(data_dir: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "monitor", "demo", "--data-dir", str(data_dir), "--rounds", ROUNDS, *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "COLUMNS": "120", **(env or {})},
    )  # fmt: skip


def _processes_using(path: Path) -> dict[int, str]:
    """Pid -> command line of live processes that mention ``path`` (Prometheus/Alertmanager configs live there)."""
    found = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (
                    (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                )
            except OSError:
                continue
            if str(path) in cmdline and "pytest" not in cmdline:
                found[int(proc.name)] = cmdline
    return found


def _stop(proc: subprocess.Popen[str], data_dir: Path) -> dict[int, str]:
    """Stop the demo as a user would (Ctrl-C), then for sure; return what it left running, stopped too.

    Prometheus and Alertmanager run in their own sessions, so killing the demo
    would orphan them: whatever still mentions ``data_dir`` is terminated here
    by pid, and returned so the test can fail on it.
    """
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    left = _processes_using(data_dir)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    return left


def _read_until(proc: subprocess.Popen[str], marker: str, timeout: float) -> str:
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if marker in line:
            return "".join(lines)
    # No kill here: the caller stops the demo with Ctrl-C, so that it stops its servers.
    pytest.fail(f"no {marker!r} in the demo's output:\n{''.join(lines)[-4000:]}")


def _refused(url: str) -> bool:
    try:
        httpx.get(url, timeout=2)
    except httpx.TransportError:
        return True
    return False


def test_demo_serves_the_alert_path_and_report_and_ctrl_c_stops_everything(
    tmp_path: Path, browser_page
) -> None:  # type: ignore[no-untyped-def]
    _binary(PROMETHEUS_BIN), _binary(ALERTMANAGER_BIN)
    data_dir = tmp_path / "demo"
    proc = _demo(data_dir, "--serve")
    try:
        _check_serving_demo(proc, data_dir, tmp_path, browser_page)
    finally:
        left = _stop(proc, data_dir)  # after a failed check too
    assert left == {}


def _check_serving_demo(proc, data_dir: Path, tmp_path: Path, browser_page) -> None:  # type: ignore[no-untyped-def]
    head = _read_until(proc, "Alertmanager: http", timeout=540)
    urls = dict(re.findall(r"^\s+([^:\n]+): (http://127\.0\.0\.1:\d+\S*)$", head, flags=re.M))
    assert "HTTP Request:" not in head, "no per-request logs without -v"
    assert f"FLClientDataDrift (warning) run demo, client {DRIFTING}" in head
    assert "alert received at the service's webhook" in head
    report_file = re.search(r"report: (\S+\.html) \(", head)
    assert report_file and Path(report_file.group(1)).is_file()

    # While it serves: the report, Prometheus and Alertmanager answer; the alert is stored.
    alerts = httpx.get(urls["alerts received"], params={"alertname": "FLClientDataDrift"}).json()
    assert {a["client_id"] for a in alerts["items"]} == {DRIFTING}
    assert httpx.get(urls["Alertmanager"] + "/-/ready").status_code == 200
    assert httpx.get(urls["Prometheus"], follow_redirects=True).status_code == 200
    firing = httpx.get(urls["Prometheus alerts (API)"]).json()["data"]["alerts"]
    assert any(a["labels"]["alertname"] == "FLClientDataDrift" for a in firing)
    page, log = browser_page
    page.goto(urls["runs and reports"])
    page.locator('a[href="/api/v1/runs/demo/report"]').click()
    page.wait_for_selector("body[data-report-ready=true]", timeout=60_000)
    page.wait_for_function(
        "() => Array.from(document.querySelectorAll('.chart')).every(el => el.dataset.drawn === 'true')",
        timeout=60_000,
    )
    assert log.errors == [] and log.foreign_requests == []
    assert all(c["marks"] > 0 for c in page.evaluate(CHART_STATE))
    row = page.locator(f'#findings-table tr[data-client="{DRIFTING}"]', has_text="label_drift")
    assert row.count() == 1 and "10-" in row.inner_text(), (
        "the drift is found where it was injected"
    )
    heat = page.evaluate(
        f"(() => {{ const d = document.getElementById('chart-drift-map').data[0];"
        f" return [d.x, d.z[d.y.indexOf('{DRIFTING}')], d.y.slice(0, 3)]; }})()"
    )
    rounds, drift, top = heat
    assert DRIFTING in top
    over = [r for r, v in zip(rounds, drift, strict=True) if v is not None and v >= 1]
    assert over and min(over) == 10, over
    page.screenshot(path=str(tmp_path / "demo-report.png"), full_page=True)

    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 0, out
    assert "stopped Prometheus, Alertmanager, fedsentinel" in out
    for url in (urls["runs and reports"], urls["Prometheus"], urls["Alertmanager"]):
        assert _refused(url), f"{url} still answers after Ctrl-C"


def test_demo_without_the_binaries_says_so_once_and_still_writes_the_report(tmp_path: Path) -> None:
    data_dir = tmp_path / "demo"
    empty_path = tmp_path / "bin"
    empty_path.mkdir()
    proc = _demo(data_dir, env={"PATH": str(empty_path)})
    try:
        out, _ = proc.communicate(timeout=540)
    finally:
        left = _stop(proc, data_dir)
    assert proc.returncode == 0, out
    notes = [line for line in out.splitlines() if "not installed" in line]
    assert len(notes) == 1 and "apt-get install prometheus prometheus-alertmanager" in notes[0], out
    assert "http://" not in out, "no URLs of servers that have stopped"
    assert "HTTP Request:" not in out
    assert (data_dir / "report-demo.html").is_file()
    assert f'id="client-{DRIFTING}"' in (data_dir / "report-demo.html").read_text()
    assert "stopped fedsentinel" in out
    assert left == {}
