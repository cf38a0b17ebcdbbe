"""Each fault changes the statistics it should, from real training, and leaves healthy clients alone.

Every faulty run is compared with the same scenario without faults. Faults start
at round 3, so up to that round both runs share the global model: the faulty
client's round-3 report must differ as the fault says, every other client's
round-3 report must be the same as in the healthy run.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from simulator.scenario import FaultSpec, Scenario
from simulator.simulation import run_scenario
from tests.simulator.conftest import RecordingSink

ONSET = 3
VICTIM = "c002"


def _scenario(*faults: FaultSpec, rounds: int = 4) -> Scenario:
    return Scenario(
        run_id="faults",
        num_clients=8,
        rounds=rounds,
        partition="iid",
        hidden=[32],
        centralized_baseline=False,
        seed=11,
        faults=list(faults),
    )


def _run(*faults: FaultSpec, rounds: int = 4, **kwargs) -> RecordingSink:
    sink = RecordingSink()
    run_scenario(_scenario(*faults, rounds=rounds), sink, progress=False, **kwargs)
    return sink


@pytest.fixture(scope="module")
def healthy() -> RecordingSink:
    return _run()


def _fault(kind: str, severity: float = 1.0, clients=(2,), **options) -> FaultSpec:
    return FaultSpec(
        kind=kind, clients=list(clients), onset_round=ONSET, severity=severity, options=options
    )


def _same(a, b) -> bool:
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-7)
    return a == b


def _assert_healthy_untouched(
    faulty: RecordingSink, healthy: RecordingSink, victims=(VICTIM,)
) -> None:
    hb, fb = healthy.by_client(ONSET), faulty.by_client(ONSET)
    others = [c for c in hb if c not in victims]
    assert len(others) == 8 - len(victims)
    for cid in others:
        assert fb[cid].keys() == hb[cid].keys()
        for key in hb[cid]:
            assert _same(fb[cid][key], hb[cid][key]), (cid, key)


def _cos(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_before_onset_nothing_differs(healthy) -> None:
    faulty = _run(_fault("label_flip"))
    for r in (1, 2):
        for cid, rep in healthy.by_client(r).items():
            assert all(_same(faulty.by_client(r)[cid][k], v) for k, v in rep.items())


def test_label_drift_moves_the_label_histogram(healthy) -> None:
    faulty = _run(_fault("label_drift", 0.8, target_class=4))
    f, h = faulty.by_client(ONSET)[VICTIM], healthy.by_client(ONSET)[VICTIM]
    share = lambda hist: hist[4] / sum(hist)  # noqa: E731
    assert share(h["label_histogram"]) < 0.2
    assert share(f["label_histogram"]) > 0.75
    assert f["num_examples"] == h["num_examples"]
    assert f["feature_histograms"] != h["feature_histograms"]  # new rows, new pixels
    _assert_healthy_untouched(faulty, healthy)


def test_covariate_shift_moves_only_the_shifted_features(healthy) -> None:
    feats = [19, 20, 21, 27, 28]
    faulty = _run(_fault("covariate_shift", 1.0, features=feats, shift=3.0))
    f, h = faulty.by_client(ONSET)[VICTIM], healthy.by_client(ONSET)[VICTIM]
    assert f["label_histogram"] == h["label_histogram"]
    for j in range(64):
        if j in feats:
            assert f["feature_histograms"][j] != h["feature_histograms"][j]
            assert f["feature_histograms"][j][-1] > h["feature_histograms"][j][-1]
        else:
            assert f["feature_histograms"][j] == h["feature_histograms"][j]
    assert f["eval_loss"] > h["eval_loss"]
    _assert_healthy_untouched(faulty, healthy)


def test_label_flip_turns_the_update_away(healthy) -> None:
    faulty = _run(_fault("label_flip"))
    f, h = faulty.by_client(ONSET)[VICTIM], healthy.by_client(ONSET)[VICTIM]
    assert f["label_histogram"] == h["label_histogram"][::-1]  # y -> 9 - y
    assert f["train_accuracy"] < h["train_accuracy"] - 0.2
    assert f["train_loss"] > h["train_loss"]
    assert _cos(f["update_sketch"], h["update_sketch"]) < 0.5
    aggregate = faulty.closes[ONSET]["aggregate_sketch"]
    cos_victim = _cos(f["update_sketch"], aggregate)
    cos_others = [
        _cos(r["update_sketch"], aggregate)
        for c, r in faulty.by_client(ONSET).items()
        if c != VICTIM
    ]
    assert cos_victim < min(cos_others)
    _assert_healthy_untouched(faulty, healthy)


def test_noisy_labels_raise_the_training_loss(healthy) -> None:
    faulty = _run(_fault("noisy_labels", 0.8))
    f, h = faulty.by_client(ONSET)[VICTIM], healthy.by_client(ONSET)[VICTIM]
    assert f["train_loss"] > h["train_loss"] + 0.3
    assert f["train_accuracy"] < h["train_accuracy"]
    assert sum(f["label_histogram"]) == sum(h["label_histogram"])
    _assert_healthy_untouched(faulty, healthy)


def test_stale_update_resends_the_previous_message(healthy) -> None:
    faulty = _run(_fault("stale_update"))
    before = faulty.by_client(ONSET - 1)[VICTIM]
    for r in (ONSET, ONSET + 1):
        assert faulty.by_client(r)[VICTIM] == before
    assert healthy.by_client(ONSET)[VICTIM]["update_sketch"] != before["update_sketch"]
    _assert_healthy_untouched(faulty, healthy)


def test_free_rider_sends_a_near_zero_update(healthy) -> None:
    faulty = _run(_fault("free_rider"))
    f, h = faulty.by_client(ONSET)[VICTIM], healthy.by_client(ONSET)[VICTIM]
    assert f["update_norm"] < 1e-2 * h["update_norm"]
    assert f["update_norm"] > 0
    _assert_healthy_untouched(faulty, healthy)


def test_exploding_update_scales_the_delta(healthy) -> None:
    faulty = _run(_fault("exploding_update", 1.0, scale=50.0))
    f, h = faulty.by_client(ONSET)[VICTIM], healthy.by_client(ONSET)[VICTIM]
    assert f["update_norm"] == pytest.approx(50 * h["update_norm"], rel=1e-4)
    np.testing.assert_allclose(
        f["update_sketch"], 50 * np.asarray(h["update_sketch"]), rtol=1e-3, atol=1e-4
    )
    assert (
        faulty.closes[ONSET]["aggregate_update_norm"]
        > 3 * healthy.closes[ONSET]["aggregate_update_norm"]
    )
    _assert_healthy_untouched(faulty, healthy)


def test_nonfinite_update_is_reported_and_kept_out_of_the_model(healthy) -> None:
    faulty = _run(_fault("nonfinite_update", 0.01))
    f = faulty.by_client(ONSET)[VICTIM]
    assert math.isnan(f["update_norm"]) and math.isnan(f["train_loss"])
    assert any(math.isnan(v) for v in f["update_sketch"])
    close = faulty.closes[ONSET]
    assert math.isfinite(close["global_eval_loss"]) and math.isfinite(
        close["aggregate_update_norm"]
    )
    for rep in faulty.by_client(ONSET + 1).values():  # the next round trains on a finite model
        if rep["client_id"] != VICTIM:
            assert math.isfinite(rep["update_norm"]) and math.isfinite(rep["eval_loss"])
    _assert_healthy_untouched(faulty, healthy)


def test_dropout_silences_the_cohort(healthy) -> None:
    faulty = _run(_fault("dropout", 1.0, clients=(2, 5)))
    assert {"c002", "c005"} <= faulty.by_client(ONSET - 1).keys()
    for r in (ONSET, ONSET + 1):
        assert not {"c002", "c005"} & faulty.by_client(r).keys()
        assert len(faulty.by_client(r)) == 6
        assert faulty.closes[r]["num_sampled"] == 8  # sampled, never heard from
    _assert_healthy_untouched(faulty, healthy, victims=("c002", "c005"))


def test_straggler_reports_late_with_the_same_statistics(healthy) -> None:
    faulty = _run(_fault("straggler", 1.0, slowdown=10.0))
    f, h = faulty.by_client(ONSET)[VICTIM], healthy.by_client(ONSET)[VICTIM]
    assert f["wall_time_seconds"] == pytest.approx(11 * h["wall_time_seconds"])
    assert f["status"] == "ok"
    for key in h:
        if key != "wall_time_seconds":
            assert _same(f[key], h[key]), key
    _assert_healthy_untouched(faulty, healthy)


def test_fairness_regression_serves_the_minority_worse_while_the_mean_improves() -> None:
    cohort = ["c000", "c001"]
    fault = FaultSpec(
        kind="fairness_regression",
        clients=[0, 1],
        onset_round=3,
        severity=1.0,
        options={"ramp_rounds": 6},
    )
    sink = RecordingSink()
    scenario = _scenario(fault, rounds=10)
    result = run_scenario(scenario, sink, progress=False, track_clients=True)
    hist = result.client_accuracy_history  # index r-1: accuracies after round r

    def mean(r: int, members: bool) -> float:
        vals = [a for c, a in hist[r - 1].items() if (c in cohort) == members]
        return float(np.mean(vals))

    assert mean(10, members=False) > mean(2, members=False) + 0.1  # the majority improves
    assert result.global_accuracy_history[-1] > result.global_accuracy_history[1]
    assert mean(10, members=True) < mean(2, members=True) - 0.1  # the cohort is served worse
    assert mean(10, members=True) < mean(10, members=False) - 0.3
    # the drift is gradual: the cohort's feature histograms keep moving after onset
    f3 = np.asarray(sink.by_client(3)["c000"]["feature_histograms"][30])
    f8 = np.asarray(sink.by_client(8)["c000"]["feature_histograms"][30])
    f2 = np.asarray(sink.by_client(2)["c000"]["feature_histograms"][30])
    assert np.abs(f8 - f2).sum() > np.abs(f3 - f2).sum()


def test_ground_truth_is_written_next_to_the_output(tmp_path) -> None:
    faults = [_fault("label_flip", 0.5, clients=("c001", 4)), _fault("dropout", 1.0, clients=(6,))]
    sink = RecordingSink()
    result = run_scenario(
        _scenario(*faults, rounds=3), sink, progress=False, truth_path=tmp_path / "run.truth.json"
    )
    body = json.loads((tmp_path / "run.truth.json").read_text())
    assert result.truth_path == tmp_path / "run.truth.json"
    got = {(t["client_id"], t["fault"], t["onset_round"], t["severity"]) for t in body["faults"]}
    assert got == {
        ("c001", "label_flip", 3, 0.5),
        ("c004", "label_flip", 3, 0.5),
        ("c006", "dropout", 3, 1.0),
    }
    assert result.ground_truth == body["faults"]
    healthy = run_scenario(
        _scenario(rounds=1), RecordingSink(), progress=False, truth_path=tmp_path / "h.json"
    )
    assert (
        healthy.ground_truth == [] and json.loads((tmp_path / "h.json").read_text())["faults"] == []
    )
