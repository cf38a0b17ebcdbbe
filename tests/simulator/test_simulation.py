"""Whole runs: the wire format, determinism, accuracy on digits, DP-FedAvg, baselines, the demo."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from monitor.schemas import (
    ClientReport,
    ReportBatch,
    RoundClose,
    RunCreate,
    validate_report_against_run,
    validate_round_close_against_run,
)
from simulator import Scenario, demo_scenario, run_scenario
from simulator.dp import epsilon_after
from tests.simulator.conftest import RecordingSink


def _validate(sink: RecordingSink) -> RunCreate:
    assert sink.registrations == 1
    run = RunCreate.model_validate(sink.spec)
    for reports in sink.reports.values():
        ReportBatch.model_validate({"reports": reports})
        for d in reports:
            validate_report_against_run(ClientReport.model_validate(d), run)
    for body in sink.closes.values():
        validate_round_close_against_run(RoundClose.model_validate(body), run)
    return run


def test_demo_runs_fast_validates_and_injects_its_faults(tmp_path) -> None:
    scenario = demo_scenario()
    assert (
        scenario.num_clients == 30
        and scenario.partition == "dirichlet"
        and len(scenario.faults) == 3
    )
    sink = RecordingSink()
    start = time.perf_counter()
    result = run_scenario(scenario, sink, progress=False, truth_path=tmp_path / "demo.truth.json")
    assert time.perf_counter() - start < 30
    run = _validate(sink)
    assert run.expected_clients == 30 and run.sketch_dim == 64 and len(run.feature_bin_edges) == 64
    assert run.centralized_accuracy == pytest.approx(result.centralized_accuracy)
    # register first, then report/close per round, rounds from 1
    assert sink.order[0] == ("register_run", None)
    assert [r for op, r in sink.order if op == "close_round"] == list(range(1, 26))
    ids = {d["client_id"] for d in sink.reports[1]}
    assert ids == {f"c{k:03d}" for k in range(30)}
    # c011 sends NaN from round 14; the cohort c020-c022 is silent from round 18
    assert math.isfinite(sink.by_client(13)["c011"]["update_norm"])
    assert math.isnan(sink.by_client(14)["c011"]["update_norm"])
    assert {"c020", "c021", "c022"} <= sink.by_client(17).keys()
    assert not {"c020", "c021", "c022"} & sink.by_client(18).keys()
    assert (
        sink.by_client(9)["c003"]["label_histogram"][1]
        / sum(sink.by_client(9)["c003"]["label_histogram"])
        < 0.5
    )
    assert (
        sink.by_client(10)["c003"]["label_histogram"][1]
        / sum(sink.by_client(10)["c003"]["label_histogram"])
        > 0.6
    )
    assert all(math.isfinite(c["global_eval_loss"]) for c in sink.closes.values())
    assert result.final_accuracy > 0.85
    assert result.local_accuracy is not None and len(result.local_accuracy) == 30
    assert all("local_accuracy" in d for d in sink.reports[1])
    for d in sink.reports[1]:  # the held-out set's size: accuracy is a count of it
        n = d["eval_examples"]
        assert isinstance(n, int) and n > 0
        assert d["eval_accuracy"] * n == pytest.approx(round(d["eval_accuracy"] * n), abs=1e-9)
    assert {t["client_id"] for t in result.ground_truth} == {"c003", "c011", "c020", "c021", "c022"}
    assert (tmp_path / "demo.truth.json").exists()


def test_same_seed_same_statistics_other_seed_other_statistics() -> None:
    scenario = Scenario(
        num_clients=6,
        rounds=3,
        partition="dirichlet",
        sample_fraction=0.5,
        hidden=[16],
        centralized_baseline=False,
        histogram_noise={"mechanism": "laplace", "scale": 1.0},
    )
    a, b, c = RecordingSink(), RecordingSink(), RecordingSink()
    run_scenario(scenario, a, progress=False)
    run_scenario(scenario, b, progress=False)
    run_scenario(scenario.model_copy(update={"seed": 1}), c, progress=False)
    assert a.spec == b.spec and a.reports == b.reports and a.closes == b.closes
    assert a.reports != c.reports


def test_digits_mlp_iid_reaches_093_and_centralized_095() -> None:
    sink = RecordingSink()
    result = run_scenario(
        Scenario(num_clients=10, rounds=20, partition="iid", model="mlp"), sink, progress=False
    )
    assert result.final_accuracy >= 0.93
    assert result.centralized_accuracy >= 0.95
    assert sink.closes[20]["global_eval_accuracy"] == pytest.approx(result.final_accuracy)
    assert result.gap == pytest.approx(result.centralized_accuracy - result.final_accuracy)
    assert result.fairness["worst"] <= result.fairness["mean"] <= result.fairness["best"]
    # statistics come from training: losses fall, eval improves, norms positive
    first, last = sink.by_client(1)["c000"], sink.by_client(20)["c000"]
    assert (
        last["train_loss"] < first["train_loss"] and last["eval_accuracy"] > first["eval_accuracy"]
    )
    assert all(d["update_norm"] > 0 for d in sink.reports[20])
    assert sum(sink.by_client(1)["c000"]["label_histogram"]) == first["num_examples"]
    assert all(sum(h) == first["num_examples"] for h in first["feature_histograms"])


def test_other_datasets_and_partitions_run_and_validate() -> None:
    for scenario in (
        Scenario(
            dataset="synthetic",
            partition="natural",
            num_clients=5,
            rounds=2,
            model="logreg",
            synthetic_max_examples=300,
            algorithm="fedprox",
            mu=0.1,
        ),
        Scenario(dataset="breast_cancer", partition="quantity", alpha=1.0, num_clients=5, rounds=2),
        Scenario(dataset="wine", partition="feature", num_clients=3, rounds=2, model="logreg"),
    ):
        sink = RecordingSink()
        result = run_scenario(scenario, sink, progress=False)
        _validate(sink)
        assert 0.0 <= result.final_accuracy <= 1.0 and result.centralized_accuracy is not None


def test_sketch_preserves_norms_and_cosines() -> None:
    sink = RecordingSink()
    run_scenario(
        Scenario(num_clients=6, rounds=1, sketch_dim=512, centralized_baseline=False),
        sink,
        progress=False,
    )
    reps = sink.reports[1]
    for d in reps:
        assert np.linalg.norm(d["update_sketch"]) == pytest.approx(d["update_norm"], rel=0.15)
    agg = sink.closes[1]
    assert np.linalg.norm(agg["aggregate_sketch"]) == pytest.approx(
        agg["aggregate_update_norm"], rel=0.15
    )


def test_dp_fedavg_clips_and_reports_epsilon_from_the_accountant() -> None:
    dp = {"noise_multiplier": 1.0, "clip_norm": 0.5, "delta": 1e-5}
    scenario = Scenario(
        num_clients=20,
        rounds=4,
        sample_fraction=0.5,
        hidden=[16],
        centralized_baseline=False,
        dp=dp,
    )
    sink = RecordingSink()
    result = run_scenario(scenario, sink, progress=False)
    run = _validate(sink)
    assert run.dp is not None and run.dp.sample_rate == 0.5 and run.dp.clip_norm == 0.5
    for r in range(1, 5):
        assert sink.closes[r]["epsilon"] == pytest.approx(
            epsilon_after(1.0, 0.5, r, 1e-5), rel=1e-9
        )
        for d in sink.reports.get(r, []):
            assert d["clipped"] == (d["update_norm"] > 0.5)
    assert any(d["clipped"] for d in sink.reports[1])
    assert result.epsilon == sink.closes[4]["epsilon"]
    # Poisson sampling: cohort sizes vary around q N
    sizes = [sink.closes[r]["num_sampled"] for r in range(1, 5)]
    assert all(0 < s < 20 for s in sizes)


def test_histogram_noise_is_declared_and_applied() -> None:
    noisy, clean = RecordingSink(), RecordingSink()
    base = dict(num_clients=4, rounds=1, hidden=[16], centralized_baseline=False)
    run_scenario(
        Scenario(**base, histogram_noise={"mechanism": "gaussian", "scale": 2.0}),
        noisy,
        progress=False,
    )
    run_scenario(Scenario(**base), clean, progress=False)
    n, c = noisy.by_client(1)["c000"], clean.by_client(1)["c000"]
    assert n["histogram_noise"] == {"mechanism": "gaussian", "scale": 2.0}
    assert "histogram_noise" not in c
    diff = np.asarray(n["label_histogram"]) - np.asarray(c["label_histogram"])
    assert np.all(diff != 0) and np.abs(diff).max() < 12
    assert n["update_norm"] == c["update_norm"]  # only the histograms are noised
    _validate(noisy)
