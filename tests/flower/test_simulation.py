"""The example app under Flower's simulation engine (Ray) against a real ``fedsentinel serve``.

One Ray start for the whole module: one ServerApp runs, on the same simulated
federation, (1) the unmonitored run, (2) the same run monitored, (3) the same
run monitored while the service is unreachable (it spools), (4) the same run
under privacy: a telemetry budget declared by the run and followed by the
clients' mods (noised label histograms, no feature histograms) and secure
aggregation (client-side update scalars, no sketches). 5 clients, 4 rounds;
client 0's label distribution drifts from round 3, client 4 crashes in round 2.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import numpy as np
import pytest

pytest.importorskip("flwr", reason="flwr is not installed: pip install -e '.[flower]'")
pytest.importorskip("ray", reason="flwr[simulation] (ray) is not installed")

from collectors.analysis import wait_for_analysis  # noqa: E402
from collectors.client import FlushResult, MonitorClient  # noqa: E402
from monitor.server import free_port  # noqa: E402
from tests.conftest import ServiceProcess  # noqa: E402

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(420)]

RUN_ID = "flower-e2e"
PRIVATE_RUN_ID = "flower-private"
PRIVATE_BUDGET = {"epsilon": 10.0, "delta": 1e-5, "planned_rounds": 4}
CLIENTS = [f"client-{i}" for i in range(5)]


@pytest.fixture(scope="module")
def simulation(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from flower_digits.client_app import make_client_app
    from flower_digits.server_app import run_federation
    from flower_digits.simulate import simulate
    from flower_digits.task import DigitsConfig
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp

    tmp = tmp_path_factory.mktemp("flower")
    service = ServiceProcess({"FEDSENTINEL_DATA_DIR": str(tmp)}).start()
    cfg = DigitsConfig(
        num_clients=5,
        rounds=4,
        fault="label-drift",
        fault_client=0,
        fault_round=3,
        crash_client=4,
        crash_round=2,
    )
    spool = MonitorClient(
        f"http://127.0.0.1:{free_port()}",
        spool_dir=tmp / "spool",
        max_retries=1,
        backoff_base_seconds=0.01,
    )
    out: dict[str, Any] = {"url": service.url, "cfg": cfg, "spool": spool}
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Any) -> None:
        out["plain"] = run_federation(grid, cfg)
        started = time.perf_counter()
        out["monitored"] = run_federation(
            grid,
            cfg,
            monitor=service.url,
            run_id=RUN_ID,
            run_extra={"thresholds": {"reference_rounds": 2}},
        )
        out["monitored_seconds"] = time.perf_counter() - started
        out["spooled"] = run_federation(grid, cfg, monitor=spool, run_id="flower-spooled")
        out["private"] = run_federation(
            grid,
            cfg,
            monitor=service.url,
            run_id=PRIVATE_RUN_ID,
            features=False,
            run_extra={
                "thresholds": {"reference_rounds": 2},
                "telemetry_budget": PRIVATE_BUDGET,
                "secure_aggregation": True,
            },
        )

    client_app: ClientApp = make_client_app(cfg)
    try:
        simulate(app, client_app, cfg.num_clients, num_cpus=2)
        with httpx.Client(base_url=service.url, timeout=30) as http:
            for run_id in (RUN_ID, PRIVATE_RUN_ID):
                wait_for_analysis(http, run_id)
        yield out
    finally:
        service.stop()


def get(sim: dict[str, Any], path: str) -> Any:
    response = httpx.get(f"{sim['url']}/api/v1{path}", timeout=10)
    response.raise_for_status()
    return response.json()


def history(sim: dict[str, Any], run_id: str, client: str) -> list[dict[str, Any]]:
    return get(sim, f"/runs/{run_id}/clients/{client}/history?limit=100")["items"]


def assert_same_weights(a: Any, b: Any) -> None:
    """Equal up to float32 summation order.

    FedAvg sums the replies in the order they arrive, which Flower's simulation
    does not fix (two unmonitored runs differ the same way, by ~1e-7).
    Bit-for-bit equality on identical replies is in test_strategy.py.
    """
    assert list(a.keys()) == list(b.keys())
    for key in a:
        np.testing.assert_allclose(a[key].numpy(), b[key].numpy(), rtol=0, atol=1e-6)


def assert_same_metrics(a: dict[int, Any], b: dict[int, Any]) -> None:
    assert a.keys() == b.keys()
    for rnd in a:
        assert dict(a[rnd]) == pytest.approx(dict(b[rnd]), rel=1e-5), rnd


def test_monitoring_changes_no_weights(simulation: dict[str, Any]) -> None:
    plain, monitored = simulation["plain"], simulation["monitored"]
    assert_same_weights(plain.arrays, monitored.arrays)
    assert_same_metrics(plain.train_metrics_clientapp, monitored.train_metrics_clientapp)
    assert_same_metrics(plain.evaluate_metrics_clientapp, monitored.evaluate_metrics_clientapp)


def test_every_round_and_client_arrives(simulation: dict[str, Any]) -> None:
    rounds = get(simulation, f"/runs/{RUN_ID}/rounds")["items"]
    assert [r["round"] for r in rounds] == [1, 2, 3, 4]
    assert all(r["status"] == "closed" and r["reports"] == 5 for r in rounds)
    assert all(r["num_sampled"] == 5 and len(r["aggregate_sketch"]) == 64 for r in rounds)
    assert rounds[-1]["global_eval_accuracy"] > rounds[0]["global_eval_accuracy"]
    for client in CLIENTS:
        items = history(simulation, RUN_ID, client)
        assert sorted(i["round"] for i in items) == [1, 2, 3, 4], client
        for item in items:
            if item["status"] != "ok":
                continue
            assert item["num_examples"] > 0 and item["update_norm"] > 0
            assert 0 <= item["eval_accuracy"] <= 1 and item["wall_time_seconds"] >= 0
            assert sum(item["label_histogram"]) == item["num_examples"]
            assert len(item["feature_histograms"]) == 64 and len(item["update_sketch"]) == 64


def test_a_failed_client_arrives_as_failed(simulation: dict[str, Any]) -> None:
    status = {i["round"]: i["status"] for i in history(simulation, RUN_ID, "client-4")}
    assert status == {1: "ok", 2: "failed", 3: "ok", 4: "ok"}


def test_label_drift_fault_produces_a_label_drift_finding(simulation: dict[str, Any]) -> None:
    findings = get(simulation, f"/runs/{RUN_ID}/findings?limit=200")["items"]
    drift = [f for f in findings if f["kind"] == "label_drift"]
    assert [f["client_id"] for f in drift] == ["client-0"], findings
    assert drift[0]["first_round"] == 3 and drift[0]["score"] > drift[0]["threshold"]
    # client 0's label histogram really changed (classes 0 and 1 only from round 3)
    hist = {i["round"]: i["label_histogram"] for i in history(simulation, RUN_ID, "client-0")}
    assert sum(hist[3][2:]) == 0 and hist[1] != hist[3]


def test_unreachable_service_spools_and_replays(simulation: dict[str, Any]) -> None:
    spool: MonitorClient = simulation["spool"]
    assert_same_weights(simulation["plain"].arrays, simulation["spooled"].arrays)
    assert spool.pending() == 1 + 2 * 4  # register + (report, close) per round
    spool._http.base_url = httpx.URL(simulation["url"])  # the service is back
    assert spool.flush() == FlushResult(sent=9, left=0)
    rounds = get(simulation, "/runs/flower-spooled/rounds")["items"]
    assert [r["status"] for r in rounds] == ["closed"] * 4


def test_private_run_sends_noised_histograms_and_client_side_scalars(
    simulation: dict[str, Any],
) -> None:
    from collectors.privacy import NoisePlan

    sigma = NoisePlan.from_budget(PRIVATE_BUDGET).sigma(1)  # labels only: H = 1
    assert_same_weights(simulation["plain"].arrays, simulation["private"].arrays)
    for client in CLIENTS:
        for item in history(simulation, PRIVATE_RUN_ID, client):
            if item["status"] != "ok":
                continue
            noise = item["histogram_noise"]
            assert noise["mechanism"] == "gaussian" and noise["scale"] == pytest.approx(sigma)
            assert noise["epsilon"] == 10.0 and noise["releases_planned"] == 4
            hist = np.asarray(item["label_histogram"])
            assert not np.allclose(hist, np.round(hist))  # noised counts
            assert item["feature_histograms"] is None and item["update_sketch"] is None
            assert item["update_norm"] > 0 and item["update_repeated"] is False
            cos = item["update_cosine_previous_global"]
            assert cos == "NaN" if noise["release"] == 1 else -1 <= cos <= 1


def test_label_drift_is_still_found_under_the_telemetry_budget(simulation: dict[str, Any]) -> None:
    findings = get(simulation, f"/runs/{PRIVATE_RUN_ID}/findings?limit=200")["items"]
    drift = [f for f in findings if f["kind"] == "label_drift"]
    assert [f["client_id"] for f in drift] == ["client-0"], findings
    assert drift[0]["first_round"] == 3
