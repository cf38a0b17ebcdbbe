"""One simulated faulty run in a real service (uvicorn in a thread, SQLite), shared by the report tests.

Client ``c003``'s labels drift toward class 1 from round 3 and ``c007`` stops
reporting from round 6, under DP-FedAvg with a budget, so every section of the
report has something to show.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from collectors.client import MonitorClient
from monitor.server import ServerThread
from monitor.settings import Settings
from monitor.store import Store
from monitor.store.scores import round_scores
from simulator.scenario import DPSettings, FaultSpec, Scenario
from simulator.simulation import run_scenario
from tests.report.browser import browser_page, chromium  # noqa: F401  (fixtures)

RUN_ID = "faulty"
ROUNDS = 10
DRIFTING = "c003"
DROPPED = "c007"


@dataclass
class FaultyRun:
    url: str
    store: Store
    data_dir: Path
    run_id: str = RUN_ID


def faulty_scenario() -> Scenario:
    return Scenario(
        run_id=RUN_ID, name="report test: label drift + dropout", dataset="digits", num_clients=10,
        rounds=ROUNDS, model="logreg", seed=0,
        dp=DPSettings(noise_multiplier=0.5, clip_norm=5.0, target_epsilon=30.0),
        faults=[
            FaultSpec(kind="label_drift", clients=[3], onset_round=3, severity=0.9, options={"target_class": 1}),
            FaultSpec(kind="dropout", clients=[7], onset_round=6, severity=1.0),
        ],
    )  # fmt: skip


def wait_analysed(store: Store, run_id: str, last_round: int, timeout: float = 60) -> None:
    """Analysis may run off the request path: wait until the last round has scores."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with store.read_session() as session:
            if round_scores(session, run_id, last_round) is not None:
                return
        time.sleep(0.2)
    pytest.fail(f"round {last_round} of {run_id} was not analysed within {timeout:.0f} s")


@pytest.fixture(scope="package")
def faulty_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultyRun]:
    data_dir = tmp_path_factory.mktemp("report-run")
    settings = Settings(data_dir=data_dir, port=0, host="127.0.0.1")
    with ServerThread(settings) as url:
        with MonitorClient(url) as sdk:
            run_scenario(faulty_scenario(), sdk, progress=False)
        store = Store(settings.resolved_database_url)
        wait_analysed(store, RUN_ID, ROUNDS)
        try:
            yield FaultyRun(url=url, store=store, data_dir=data_dir)
        finally:
            store.dispose()
