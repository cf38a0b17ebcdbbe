"""What ``fedsentinel demo`` runs: the service, Prometheus and Alertmanager, a faulty federation, the alert.

``Demo`` owns every server it starts in one ``ExitStack``, so they stop in
reverse order on success, on error and on Ctrl-C alike. The steps:

1. the service in a thread on a free loopback port (SQLite in the data dir);
2. where the Debian binaries are installed, Alertmanager (routing to the
   service's webhook) and Prometheus (the project's scrape config and alert
   rules, 1 s intervals) on free loopback ports; otherwise one line says so;
3. the simulated federation with injected faults, with a progress bar;
4. wait until the engine has analysed the last round (analysis may run off the
   request path), then until ``FLClientDataDrift`` for the drifting client
   has travelled Prometheus -> Alertmanager -> webhook, and print it;
5. the HTML report, written from the store.
"""

from __future__ import annotations

import shutil
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from monitor.demo import stack
from monitor.server import ServerThread
from monitor.settings import Settings
from monitor.store import Store
from monitor.store.scores import round_scores

DRIFT_ALERT = "FLClientDataDrift"
MARKER = ".fedsentinel-demo"


class DemoError(RuntimeError):
    """A step of the demo failed; the message says which and why."""


@dataclass
class DemoOptions:
    data_dir: Path
    port: int = 0
    rounds: int | None = None
    alert_timeout: float = 120.0
    report: Path | None = None


@dataclass
class DemoResult:
    run_id: str
    service_url: str
    report_path: Path
    prometheus_url: str | None = None
    alertmanager_url: str | None = None
    alert: dict[str, Any] | None = None
    missing_binaries: list[str] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)
    findings: dict[str, Any] = field(default_factory=dict)
    ground_truth: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    steps: dict[str, float] = field(default_factory=dict)


def prepare_data_dir(data_dir: Path) -> None:
    """Wipe a previous demo's directory; refuse any other non-empty one."""
    marker = data_dir / MARKER
    if data_dir.exists() and any(data_dir.iterdir()) and not marker.exists():
        raise DemoError(
            f"{data_dir} is not empty and is not a previous demo's directory; "
            "choose another --data-dir (the demo wipes it)"
        )
    if data_dir.exists():
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True)
    marker.touch()


def demo_settings(options: DemoOptions) -> Settings:
    """The demo service's settings: its own SQLite store in the data dir, open, notifying no one.

    ``FEDSENTINEL_*`` variables set for a real service must not reach the demo:
    a database URL would put the demo run in that database (where the next demo
    finds run ``demo`` taken), API keys or a webhook token would refuse the
    demo's own SDK and Alertmanager (no alert ever arrives), and a notify URL
    would page a real receiver with the demo's findings. Other settings
    (limits, timeouts) still apply. ``api_keys`` is cleared after validation:
    pydantic-settings merges a dict argument into the environment's dict.
    """
    settings = Settings(data_dir=options.data_dir, port=options.port, host="127.0.0.1",
                        database_url=None, alert_webhook_token=None,
                        notify_webhook_url=None, notify_webhook_token=None)  # fmt: skip
    return settings.model_copy(update={"api_keys": {}})


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise DemoError(f"gave up after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class Demo:
    """``with Demo(options, console) as demo: result = demo.run()``; leaving the block stops everything."""

    def __init__(self, options: DemoOptions, console: Console) -> None:
        self.options = options
        self.console = console
        self.stack = ExitStack()
        self.stopped: list[str] = []

    def __enter__(self) -> Demo:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stack.close()

    def _own(self, name: str, server: Any) -> Any:
        """Start ``server`` (a context manager) and stop it when the demo ends."""
        self.stack.callback(self.stopped.append, name)  # runs once the server has stopped
        return self.stack.enter_context(server)

    def start_service(self) -> str:
        settings = demo_settings(self.options)
        self.database_url = settings.resolved_database_url
        return self._own("fedsentinel", ServerThread(settings))

    def start_alerting(self, service_url: str, result: DemoResult) -> None:
        binaries = {
            name: stack.find_binary(name) for name in (stack.PROMETHEUS_BIN, stack.ALERTMANAGER_BIN)
        }
        result.missing_binaries = [name for name, path in binaries.items() if path is None]
        if result.missing_binaries:
            self.console.print(
                f"[yellow]{' and '.join(result.missing_binaries)} not installed ({stack.INSTALL_HINT}): "
                "running without Prometheus and Alertmanager, so no alert will arrive[/]"
            )
            return
        root = self.options.data_dir / "alerting"
        am = stack.make_alertmanager(
            binaries[stack.ALERTMANAGER_BIN], root, f"{service_url}/api/v1/alerts/webhook"
        )
        self._own("Alertmanager", am)
        am.start()
        prom = stack.make_prometheus(binaries[stack.PROMETHEUS_BIN], root, service_url, am.url)
        self._own("Prometheus", prom)
        prom.start(timeout=60)
        result.alertmanager_url, result.prometheus_url = am.url, prom.url

    def run(self) -> DemoResult:
        from collectors import MonitorClient
        from simulator import demo_scenario, run_scenario

        started = mark = time.monotonic()
        scenario = demo_scenario()
        if self.options.rounds is not None:
            scenario = scenario.model_copy(update={"rounds": self.options.rounds})
        url = self.start_service()
        result = DemoResult(
            run_id=scenario.run_id, service_url=url, report_path=self._report_path(scenario.run_id)
        )
        self.start_alerting(url, result)
        mark = self._step(result, "servers", mark)
        self.console.print(
            f"federation: {scenario.num_clients} clients, {scenario.rounds} rounds, injected faults "
            f"(preparing data and the centralized and local-only baselines first)"
        )
        with MonitorClient(url, spool_dir=self.options.data_dir / "spool") as sdk:
            sim = run_scenario(
                scenario, sdk, truth_path=self.options.data_dir / f"{scenario.run_id}.truth.json"
            )
        result.ground_truth = list(getattr(sim, "ground_truth", []))
        mark = self._step(result, "federation", mark)
        self.wait_analysed(scenario.run_id, scenario.rounds)
        mark = self._step(result, "analysis", mark)
        if result.prometheus_url:
            drifting = next(
                (
                    f"c{c:03d}"
                    for f in scenario.faults
                    if f.kind == "label_drift"
                    for c in f.clients
                ),
                None,
            )
            result.alert = self.wait_alert(url, scenario.run_id, drifting)
            mark = self._step(result, "alert", mark)
        api = f"{url}/api/v1/runs/{scenario.run_id}"
        result.detail = httpx.get(api, timeout=30).json()
        result.findings = httpx.get(f"{api}/findings", params={"limit": 1000}, timeout=30).json()
        self.write_report(scenario.run_id, result.report_path)
        self._step(result, "report", mark)
        result.seconds = time.monotonic() - started
        return result

    @staticmethod
    def _step(result: DemoResult, name: str, since: float) -> float:
        now = time.monotonic()
        result.steps[name] = now - since
        return now

    def _report_path(self, run_id: str) -> Path:
        return self.options.report or self.options.data_dir / f"report-{run_id}.html"

    def wait_analysed(self, run_id: str, last_round: int) -> None:
        store = Store(self.database_url)
        try:

            def analysed() -> bool:
                with store.read_session() as session:
                    return round_scores(session, run_id, last_round) is not None

            with self.console.status("waiting for the engine to analyse the last round"):
                wait_until(analysed, 120, f"the analysis of round {last_round}", interval=0.2)
        finally:
            store.dispose()

    def wait_alert(self, url: str, run_id: str, client: str | None) -> dict[str, Any]:
        params = {"run": run_id, "alertname": DRIFT_ALERT, "status": "firing"}
        if client:
            params["client"] = client

        def arrived() -> dict[str, Any] | None:
            items = httpx.get(f"{url}/api/v1/alerts", params=params, timeout=10).json()["items"]
            return items[-1] if items else None

        what = f"{DRIFT_ALERT} for client {client} (Prometheus -> Alertmanager -> the service's webhook)"
        with self.console.status(f"waiting for {what}"):
            return wait_until(arrived, self.options.alert_timeout, what)

    def write_report(self, run_id: str, path: Path) -> None:
        from monitor.report import run_report_html

        store = Store(self.database_url)
        try:
            with store.read_session() as session:
                page = run_report_html(session, run_id)
        finally:
            store.dispose()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(page, encoding="utf-8")
