"""End to end: simulator -> SDK -> fedsentinel -> Prometheus (project rules) -> Alertmanager -> webhook.

Real processes on loopback ports: ``fedsentinel serve`` (uvicorn), Prometheus
scraping every second with the rules of dashboards/prometheus/rules, and
Alertmanager with dashboards/alertmanager/alertmanager.yml posting to the
service's own webhook. A run with label drift on one known client must
produce the client-drift alert for that run and client; a healthy run must
produce none.
"""

from __future__ import annotations

import shutil
import subprocess

import httpx
import pytest

from collectors.client import MonitorClient
from simulator.scenario import FaultSpec, Scenario
from simulator.simulation import run_scenario
from tests.e2e.servers import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

ROUNDS = 9
DRIFTING_CLIENT = "c003"


def scenario(run_id: str, *faults: FaultSpec, seed: int = 0) -> Scenario:
    return Scenario(run_id=run_id, dataset="digits", num_clients=10, rounds=ROUNDS, model="logreg", seed=seed,
                    centralized_baseline=False, faults=list(faults))  # fmt: skip


def test_label_drift_alert_reaches_the_webhook_and_a_healthy_run_stays_quiet(
    service_factory, prometheus_factory, alertmanager_factory
) -> None:  # type: ignore[no-untyped-def]
    service = service_factory()
    alertmanager = alertmanager_factory(webhook_url=f"{service.url}/api/v1/alerts/webhook")
    prometheus = prometheus_factory(service.url, alertmanager.url)

    with MonitorClient(service.url) as client:
        run_scenario(scenario("healthy", seed=1), client, progress=False)
        run_scenario(
            scenario("drifting", FaultSpec(kind="label_drift", clients=[3], onset_round=2, severity=0.9,
                                           options={"target_class": 1})),
            client, progress=False,
        )  # fmt: skip
        client.wait_for_analysis("healthy")
        client.wait_for_analysis("drifting")

    alerts_api = f"{service.url}/api/v1/alerts"

    def drift_alert() -> list[dict]:
        page = httpx.get(alerts_api, params={"run": "drifting", "client": DRIFTING_CLIENT,
                                             "alertname": "FLClientDataDrift", "status": "firing"}).json()  # fmt: skip
        return page["items"]

    items = wait_for(
        drift_alert,
        timeout=60,
        what="FLClientDataDrift for run drifting, client c003 at the webhook",
    )
    alert = items[-1]
    assert alert["severity"] == "warning"
    assert alert["labels"]["job"] == "fedsentinel"
    assert alert["receiver"] == "fedsentinel-webhook"
    assert alert["annotations"]["summary"].startswith(
        f"Run drifting: client {DRIFTING_CLIENT} data drifted for"
    )
    assert alert["annotations"]["runbook_url"] == "docs/alerts.md#flclientdatadrift"
    assert alert["fingerprint"] and alert["starts_at"] and alert["ends_at"] is None

    # The healthy run's final round was scraped and evaluated all along: no alert of any kind for it.
    assert float(prometheus.query('fl_run_round{run="healthy"}')[0]["value"][1]) == ROUNDS
    assert prometheus.query('fl_client_drift_streak_rounds{run="healthy"}'), (
        "healthy clients are exported"
    )
    assert (
        prometheus.query('max(fl_client_drift_streak_rounds{run="healthy"})')[0]["value"][1] == "0"
    )
    assert [a for a in prometheus.alerts() if a["labels"].get("run") == "healthy"] == []
    healthy = httpx.get(alerts_api, params={"run": "healthy"}).json()
    assert healthy["total"] == 0, healthy["items"]
    # Only the drifting client alerts in the drifting run.
    clients = {
        a["labels"].get("client")
        for a in prometheus.alerts()
        if a["labels"].get("run") == "drifting"
    }
    assert clients <= {DRIFTING_CLIENT, None}, clients

    # The live scrape, with two runs in it, is lint-clean.
    if shutil.which("promtool"):
        text = httpx.get(f"{service.url}/metrics").text
        lint = subprocess.run(
            ["promtool", "check", "metrics"], input=text, capture_output=True, text=True
        )
        assert lint.returncode == 0, lint.stdout + lint.stderr
