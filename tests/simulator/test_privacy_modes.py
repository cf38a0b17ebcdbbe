"""The simulator's telemetry budget, histogram modes and secure-aggregation scalars."""

from __future__ import annotations

import math

import numpy as np
import pytest

from collectors.privacy import NoisePlan
from monitor.schemas import ClientReport, RunCreate, validate_report_against_run
from monitor.signals import telemetry_privacy as tp
from simulator import Scenario, run_scenario
from tests.simulator.conftest import RecordingSink

BASE = dict(num_clients=5, rounds=6, hidden=[8], centralized_baseline=False, sketch_dim=16)


def _validated(sink: RecordingSink) -> RunCreate:
    run = RunCreate.model_validate(sink.spec)
    for reports in sink.reports.values():
        for d in reports:
            validate_report_against_run(ClientReport.model_validate(d), run)
    return run


def test_telemetry_budget_noise_schedule_and_declaration() -> None:
    noisy, clean = RecordingSink(), RecordingSink()
    budget = {"epsilon": 3.0, "delta": 1e-5, "every_k_rounds": 2}
    run_scenario(Scenario(**BASE, telemetry_budget=budget), noisy, progress=False)
    run_scenario(Scenario(**BASE), clean, progress=False)
    run = _validated(noisy)
    assert run.telemetry_budget.epsilon == 3.0 and run.telemetry_budget.planned_rounds == 6
    h = 1 + len(run.feature_bin_edges)
    plan = NoisePlan.from_budget({**budget, "planned_rounds": 6})
    assert plan.releases_planned == 3
    for rnd in range(1, 7):
        for cid, n in noisy.by_client(rnd).items():
            c = clean.by_client(rnd)[cid]
            assert n["update_norm"] == c["update_norm"]  # only the histograms change
            if rnd in (1, 3, 5):
                decl = n["histogram_noise"]
                assert decl["scale"] == pytest.approx(plan.sigma(h))
                assert decl["release"] == (rnd + 1) // 2
                diff = np.asarray(n["label_histogram"]) - np.asarray(c["label_histogram"])
                assert np.all(diff != 0)
            else:
                assert "label_histogram" not in n and "histogram_noise" not in n
    # what the budget guarantees: three releases at this multiplier stay within epsilon 3
    assert tp.gaussian_epsilon(plan.noise_multiplier, 3, 1e-5) <= 3.0


def test_histogram_modes() -> None:
    labels, none = RecordingSink(), RecordingSink()
    run_scenario(Scenario(**BASE, histograms="labels"), labels, progress=False)
    run_scenario(Scenario(**BASE, histograms="none"), none, progress=False)
    assert all("feature_histograms" not in r and "label_histogram" in r for r in labels.reports[2])
    assert all(
        "feature_histograms" not in r and "label_histogram" not in r for r in none.reports[2]
    )
    with pytest.raises(ValueError, match="not both"):
        Scenario(**BASE, telemetry_budget={"epsilon": 1.0}, histogram_noise={"scale": 1.0})


def test_secure_aggregation_reports_client_scalars_not_sketches() -> None:
    sa, plain = RecordingSink(), RecordingSink()
    faults = [{"kind": "stale_update", "clients": [1], "onset_round": 3, "severity": 1.0}]
    run_scenario(Scenario(**BASE, secure_aggregation=True, faults=faults), sa, progress=False)
    run_scenario(Scenario(**BASE, faults=faults), plain, progress=False)
    run = _validated(sa)
    assert run.secure_aggregation
    for rnd in range(1, 7):
        for cid, r in sa.by_client(rnd).items():
            p = plain.by_client(rnd)[cid]
            assert "update_sketch" not in r and "update_sketch" in p
            assert r["update_norm"] == pytest.approx(p["update_norm"], rel=1e-5)
            cos = r["update_cosine_previous_global"]
            assert math.isnan(cos) if rnd == 1 else -1 <= cos <= 1
            assert r["update_repeated"] is (cid == "c001" and rnd >= 3)
        assert len(sa.closes[rnd]["aggregate_sketch"]) == 16  # the aggregate is still sketched
    # the cosine against the previous aggregate, checked with the plain run's sketches:
    # JL keeps cosines to ~1/sqrt(16), so signs and rough size must agree
    r3 = sa.by_client(3)["c000"]["update_cosine_previous_global"]
    s3 = np.asarray(plain.by_client(3)["c000"]["update_sketch"])
    g2 = np.asarray(plain.closes[2]["aggregate_sketch"])
    assert r3 == pytest.approx(s3 @ g2 / np.linalg.norm(s3) / np.linalg.norm(g2), abs=0.35)


def test_evaluation_cases_carry_severity_and_scenario_options() -> None:
    from monitor.evaluation.grid import Case, make_scenario

    common = dict(fault="label_drift", alpha=0.5, seed=0, rounds=20, clients=(10, 12), onset=(8, 9))
    plain = make_scenario(Case(**common))
    tuned = make_scenario(
        Case(
            **common,
            severity=0.9,
            options=(("telemetry_budget", {"epsilon": 3.0}), ("histograms", "labels")),
            tag="e3",
        )
    )
    assert tuned.run_id == plain.run_id + "-e3"
    assert tuned.telemetry_budget.epsilon == 3.0 and tuned.histograms == "labels"
    assert [f.severity for f in tuned.faults] == [0.9] * len(plain.faults)
    # the same federation, clients and onset: budgets are compared on the same runs
    assert tuned.num_clients == plain.num_clients
    assert [(f.clients, f.onset_round) for f in tuned.faults] == [
        (f.clients, f.onset_round) for f in plain.faults
    ]
