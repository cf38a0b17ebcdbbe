"""Client-side telemetry noise: calibration, schedule, the noise itself, and the SDK option."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from collectors.privacy import NoisePlan, ReleaseState, TelemetryNoiser, privatize_report
from monitor.schemas import ClientReport, TelemetryBudget
from monitor.signals import telemetry_privacy as tp

BUDGET = TelemetryBudget(epsilon=3.0, delta=1e-5, planned_rounds=30)


def _report(cid: str = "c0", features: int = 3) -> dict:
    return {
        "client_id": cid,
        "num_examples": 40,
        "label_histogram": [10.0, 20.0, 10.0],
        "feature_histograms": [[20.0, 20.0]] * features,
    }


def test_plan_spreads_the_budget_over_the_planned_releases() -> None:
    plan = NoisePlan.from_budget(BUDGET)
    assert plan.releases_planned == 30
    assert plan.noise_multiplier == tp.calibrate_noise_multiplier(3.0, 1e-5, 30)
    assert tp.gaussian_epsilon(plan.noise_multiplier, 30, 1e-5) <= 3.0
    # H = 1 label + 3 feature histograms: sigma = z sqrt(2 * 4)
    assert plan.sigma(4) == pytest.approx(plan.noise_multiplier * math.sqrt(8))
    every5 = NoisePlan.from_budget(BUDGET.model_copy(update={"every_k_rounds": 5}))
    assert every5.releases_planned == 6
    assert every5.noise_multiplier < plan.noise_multiplier  # fewer releases, less noise each
    with pytest.raises(ValueError, match="planned_rounds"):
        NoisePlan.from_budget({"epsilon": 1.0})


def test_noise_has_the_declared_sigma_and_the_report_validates() -> None:
    plan = NoisePlan.from_budget(BUDGET)
    rng = np.random.default_rng(7)
    draws = []
    for _ in range(400):
        out = privatize_report(_report(), plan, ReleaseState(), 1, rng)
        draws.append(np.array(out["label_histogram"]) - [10.0, 20.0, 10.0])
        draws.extend(np.array(h) - 20.0 for h in out["feature_histograms"])
    noise = np.concatenate(draws)
    sigma = plan.sigma(4)
    # chi-square test of the variance at 1e-4 (the draws are fixed by the seed)
    chi2 = float((noise**2).sum() / sigma**2)
    lo, hi = stats.chi2.ppf([1e-4, 1 - 1e-4], len(noise))
    assert lo < chi2 < hi
    assert abs(noise.mean()) < 5 * sigma / math.sqrt(len(noise))
    declared = out["histogram_noise"]
    assert declared == {
        "mechanism": "gaussian",
        "scale": pytest.approx(sigma),
        "l2_sensitivity": pytest.approx(math.sqrt(8)),
        "epsilon": 3.0,
        "delta": 1e-5,
        "releases_planned": 30,
        "release": 1,
    }
    ClientReport.model_validate(out)  # negative noised counts are fine once declared


def test_schedule_every_k_rounds_and_stop_after_the_planned_releases() -> None:
    plan = NoisePlan.from_budget(TelemetryBudget(epsilon=3.0, planned_rounds=6, every_k_rounds=2))
    state = ReleaseState()
    rng = np.random.default_rng(0)
    released = []
    for rnd in range(1, 13):  # the run goes on twice as long as planned
        out = privatize_report(_report(), plan, state, rnd, rng)
        if "label_histogram" in out:
            released.append((rnd, out["histogram_noise"]["release"]))
        else:
            assert "feature_histograms" not in out and "histogram_noise" not in out
    assert released == [(1, 1), (3, 2), (5, 3)]  # ceil(6 / 2) = 3 releases, then none
    assert state.releases_done == 3


def test_hand_noised_and_histogram_free_reports_are_left_alone() -> None:
    plan = NoisePlan.from_budget(BUDGET)
    rng = np.random.default_rng(0)
    hand = {**_report(), "histogram_noise": {"mechanism": "laplace", "scale": 2.0}}
    assert privatize_report(hand, plan, ReleaseState(), 1, rng) == hand
    bare = {"client_id": "c0", "eval_accuracy": 0.5}
    state = ReleaseState()
    assert privatize_report(bare, plan, state, 1, rng) == bare
    assert state.releases_done == 0  # nothing released, nothing spent


def test_noiser_keeps_a_release_count_per_client_and_skips_failed_reports() -> None:
    noiser = TelemetryNoiser(BUDGET, seed=1)
    for rnd in (1, 2):
        out = noiser.noise(
            "run-1", rnd, [_report("a"), _report("b"), {"client_id": "c", "status": "failed"}]
        )
        assert out[2] == {"client_id": "c", "status": "failed"}
    assert noiser.releases("run-1", "a") == 2 and noiser.releases("run-1", "c") == 0
    assert noiser.releases("run-2", "a") == 0


@pytest.mark.e2e
def test_sdk_option_sends_noised_declared_histograms(service_factory, database_url) -> None:
    import httpx

    from collectors import MonitorClient
    from tests.factories import run_spec

    service = service_factory(database_url)
    spec = run_spec(expected_clients=2)
    n_features = len(spec["feature_bin_edges"])
    with MonitorClient(service.url, telemetry_budget=BUDGET, telemetry_seed=3) as sdk:
        sdk.register_run(spec)
        raw = {
            "client_id": "c0",
            "num_examples": 50,
            "label_histogram": [50.0] + [0.0] * (spec["task"]["num_classes"] - 1),
            "feature_histograms": [
                [50.0] + [0.0] * (len(e) - 2) for e in spec["feature_bin_edges"]
            ],
        }
        sdk.report(spec["run_id"], 1, [raw])
    stored = httpx.get(f"{service.url}/api/v1/runs/{spec['run_id']}/clients/c0/history").json()
    item = stored["items"][0]
    noise = item["histogram_noise"]
    h = 1 + n_features
    assert noise["mechanism"] == "gaussian" and noise["release"] == 1
    assert noise["scale"] == pytest.approx(NoisePlan.from_budget(BUDGET).sigma(h))
    assert item["label_histogram"] != raw["label_histogram"]
