"""fl_client_telemetry_epsilon through a real service: the SDK noises, the service accounts, /metrics shows it.

The epsilon the service exports for a client that followed the budget must be
the one Opacus' RDPAccountant gives for the noise that client declared; a
client that sent raw histograms must read +Inf; the exposition stays
promtool-clean with those values.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from collectors import MonitorClient
from collectors.privacy import NoisePlan
from monitor.server import ServerThread
from monitor.settings import Settings
from tests.factories import EDGES, report, run_spec

pytestmark = pytest.mark.e2e

BUDGET = {"epsilon": 3.0, "delta": 1e-5, "planned_rounds": 6}
ROUNDS = 3


def _scrape(url: str) -> tuple[str, dict[tuple[str, tuple], float]]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return text, out


def _wait_analysed(url: str, run_id: str, rnd: int) -> tuple[str, dict[tuple[str, tuple], float]]:
    deadline = time.monotonic() + 60
    while True:
        text, samples = _scrape(url)
        if samples.get(("fl_run_round", (("run", run_id),)), -1) >= rnd:
            return text, samples
        if time.monotonic() > deadline:
            raise AssertionError(f"round {rnd} of {run_id} was not analysed within 60 s")
        time.sleep(0.2)


def test_exported_epsilon_is_the_accountants_and_raw_histograms_are_infinite(
    tmp_path: Path,
) -> None:
    from opacus.accountants import RDPAccountant

    from monitor.signals.telemetry_privacy import ORDERS
    from tests.exporter.test_exporter import promtool

    settings = Settings(data_dir=tmp_path, host="127.0.0.1", port=0, log_level="warning")
    spec = run_spec("tele", expected_clients=2, telemetry_budget=BUDGET)
    with ServerThread(settings) as url:
        with (
            MonitorClient(url, telemetry_budget=BUDGET, telemetry_seed=5) as private,
            MonitorClient(url) as raw,
        ):
            private.register_run(spec)
            for rnd in range(1, ROUNDS + 1):
                private.report("tele", rnd, [report("good", seed=rnd)])
                raw.report("tele", rnd, [report("raw", seed=rnd)])
                private.close_round("tele", rnd, {"num_sampled": 2})
        text, samples = _wait_analysed(url, "tele", ROUNDS)

    h = 1 + len(EDGES)  # the factories' run: one label and two feature histograms
    plan = NoisePlan.from_budget(BUDGET)
    acct = RDPAccountant()
    for _ in range(ROUNDS):
        acct.step(noise_multiplier=plan.sigma(h) / math.sqrt(2 * h), sample_rate=1.0)
    expected = acct.get_epsilon(1e-5, alphas=list(ORDERS))

    def client(cid: str) -> float:
        return samples[("fl_client_telemetry_epsilon", (("client", cid), ("run", "tele")))]

    assert client("good") == pytest.approx(expected, rel=1e-9)
    assert client("good") < 3.0
    assert math.isinf(client("raw"))
    run = (("run", "tele"),)
    assert math.isinf(samples[("fl_run_telemetry_epsilon_max", run)])
    assert samples[("fl_run_telemetry_unprotected_clients", run)] == 1
    assert samples[("fl_run_telemetry_budget_epsilon", run)] == 3.0
    result = promtool("check", "metrics", stdin=text)
    assert result.returncode == 0, result.stdout + result.stderr
