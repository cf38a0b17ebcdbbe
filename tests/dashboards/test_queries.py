"""Every panel query of every dashboard returns data from a real Prometheus after a faulty simulated run.

No Grafana server can be installed on these machines, so Grafana's part is
played here: each variable query (``label_values``) goes to Prometheus'
label-values API, each panel query (variables replaced by those values) to
``/api/v1/query_range``, exactly as Grafana's Prometheus datasource would send
them. The processes are real and on loopback: ``fedsentinel serve``,
Prometheus (the e2e harness of tests/e2e, config derived from
dashboards/prometheus/prometheus.yml, 1 s scrapes), and the simulator
reporting a run with DP, baselines and injected faults through the SDK.
"""

from __future__ import annotations

import math
import time

import httpx
import pytest

from collectors.client import MonitorClient
from simulator.scenario import DPSettings, FaultSpec, Scenario
from simulator.simulation import run_scenario
from tests.dashboards.helpers import (
    LABEL_VALUES,
    dashboards,
    data_panels,
    exprs,
    metric_names,
    substitute,
)
from tests.e2e.servers import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

RUN = "dash"
ROUNDS = 12
DRIFTING = "c003"


def faulty_scenario() -> Scenario:
    """Small and fast, with every panel's source present: DP budget, baselines, faults of several kinds."""
    return Scenario(
        run_id=RUN, dataset="digits", partition="dirichlet", alpha=0.5, num_clients=12, rounds=ROUNDS,
        model="logreg", seed=3, local_baselines=True, centralized_baseline=True,
        dp=DPSettings(noise_multiplier=1.0, clip_norm=5.0, target_epsilon=20.0),
        faults=[
            FaultSpec(kind="label_drift", clients=[3], onset_round=3, severity=0.9, options={"target_class": 1}),
            FaultSpec(kind="stale_update", clients=[5], onset_round=4),
            FaultSpec(kind="nonfinite_update", clients=[7], onset_round=6),
            FaultSpec(kind="dropout", clients=[9, 10], onset_round=7),
        ],
    )  # fmt: skip


def label_values(prometheus_url: str, query: str, values: dict[str, str]) -> list[str]:
    match = LABEL_VALUES.match(query)
    assert match, query
    params = {"match[]": substitute(match["selector"], values)} if match["selector"] else {}
    body = httpx.get(
        f"{prometheus_url}/api/v1/label/{match['label']}/values", params=params, timeout=10
    ).json()
    assert body["status"] == "success", body
    return body["data"]


def query_range(prometheus_url: str, expr: str, start: float, end: float) -> list[dict]:
    body = httpx.get(
        f"{prometheus_url}/api/v1/query_range",
        params={"query": expr, "start": start, "end": end, "step": "1s"},
        timeout=20,
    ).json()
    assert body["status"] == "success", (expr, body)
    return body["data"]["result"]


def finite(result: list[dict]) -> bool:
    return any(math.isfinite(float(v)) for series in result for _, v in series["values"])


def test_every_panel_query_returns_data(service_factory, prometheus_factory) -> None:  # type: ignore[no-untyped-def]
    service = service_factory()
    prometheus = prometheus_factory(service.url)
    # Scrapes must bracket the run: a counter that only moved before the first scrape has no rate.
    wait_for(lambda: prometheus.query("up == 1"), timeout=30, what="Prometheus' first scrape of the service")
    start = time.time()
    with MonitorClient(service.url) as client:
        run_scenario(faulty_scenario(), client, progress=False)
        client.wait_for_analysis(RUN)
    wait_for(
        lambda: prometheus.query(f'fl_run_round{{run="{RUN}"}} == {ROUNDS}'),
        timeout=30,
        what=f"Prometheus to scrape round {ROUNDS} of the run",
    )
    time.sleep(3)  # a few scrapes of the final state, so rates have two points after the run
    end = time.time()

    exported = set(
        httpx.get(f"{prometheus.url}/api/v1/label/__name__/values", timeout=10).json()["data"]
    )
    values = {"__rate_interval": "15s", "__range": f"{int(end - start) + 60}s", "__interval": "1s"}
    failures: list[str] = []
    checked = 0
    for name, board in dashboards().items():
        board_values = dict(values)
        for variable in board["templating"]["list"]:
            options = label_values(prometheus.url, variable["query"], board_values)
            assert options, f"{name}: ${variable['name']} ({variable['query']}) has no values"
            if variable.get("includeAll"):
                board_values[variable["name"]] = variable["allValue"]
            elif variable["name"] == "run":
                assert RUN in options
                board_values["run"] = RUN
            elif variable["name"] == "client":
                assert DRIFTING in options, "the drifting client is flagged, hence exported"
                board_values["client"] = DRIFTING
            else:
                board_values[variable["name"]] = options[0]
        for panel in data_panels(board):
            for expr in exprs(panel):
                missing = metric_names(expr) - exported
                if missing:
                    failures.append(f"{name}: {panel['title']}: {sorted(missing)} never scraped")
                result = query_range(prometheus.url, substitute(expr, board_values), start, end)
                checked += 1
                if not finite(result):
                    failures.append(f"{name}: {panel['title']}: no data for {expr}")
    assert not failures, "\n".join(failures)
    print(f"checked {checked} queries; run {end - start:.1f} s")
    assert checked > 100
