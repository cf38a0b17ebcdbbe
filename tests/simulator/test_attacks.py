"""Byzantine attacks, the federation-wide shift and the participation conditions (issue 11).

As in ``test_faults.py``, every faulty run is compared with the same scenario without
faults: up to the onset both share the global model, so in the onset round the
attacker's honest update is the healthy run's update of the same client, and every
other client's report must be unchanged.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from simulator import faults as F
from simulator.scenario import FaultSpec, Scenario
from simulator.simulation import Simulation, run_scenario
from tests.simulator.conftest import RecordingSink
from tests.simulator.test_faults import (
    ONSET,
    VICTIM,
    _assert_healthy_untouched,
    _cos,
    _fault,
    _run,
    _scenario,
)


@pytest.fixture(scope="module")
def healthy() -> RecordingSink:
    return _run()


def test_sign_flip_sends_the_honest_update_negated(healthy) -> None:
    faulty = _run(_fault("sign_flip"))
    f, h = faulty.by_client(ONSET)[VICTIM], healthy.by_client(ONSET)[VICTIM]
    assert _cos(f["update_sketch"], h["update_sketch"]) == pytest.approx(-1.0, abs=1e-6)
    assert f["update_norm"] == pytest.approx(h["update_norm"], rel=1e-5)
    # the client's own statistics stay honest: only the update is crafted
    assert f["train_loss"] == pytest.approx(h["train_loss"])
    assert f["label_histogram"] == h["label_histogram"]
    _assert_healthy_untouched(faulty, healthy)
    doubled = _run(_fault("sign_flip", 2.0)).by_client(ONSET)[VICTIM]
    assert doubled["update_norm"] == pytest.approx(2 * h["update_norm"], rel=1e-5)


def test_gaussian_noise_has_the_real_norm_and_no_direction(healthy) -> None:
    faulty = _run(_fault("gaussian_noise"))
    f, h = faulty.by_client(ONSET)[VICTIM], healthy.by_client(ONSET)[VICTIM]
    assert f["update_norm"] == pytest.approx(h["update_norm"], rel=1e-5)
    # a random direction in ~2,400 parameters: the 64-dim sketch's cosine is ~N(0, 1/64)
    assert abs(_cos(f["update_sketch"], h["update_sketch"])) < 0.5
    assert abs(_cos(f["update_sketch"], faulty.closes[ONSET]["aggregate_sketch"])) < 0.5
    _assert_healthy_untouched(faulty, healthy)


def test_alie_is_mean_minus_z_std_of_the_honest_updates_per_coordinate() -> None:
    gen = torch.Generator().manual_seed(3)
    deltas = torch.randn((20, 2000), generator=gen) * 0.1 + 0.02
    nonfinite = torch.zeros(20, dtype=torch.bool)
    deltas[7, 5] = float("nan")
    nonfinite[7] = True
    spec = FaultSpec(kind="alie", clients=[0, 1, 2], severity=1.0)
    out = F.apply_colluding_faults(deltas, nonfinite, [(F.ActiveFault(0, spec), [0, 1, 2])])
    honest = np.delete(deltas.numpy(), [0, 1, 2, 7], axis=0)  # colluders and the NaN row left out
    expected = honest.mean(axis=0) - 1.0 * honest.std(axis=0)
    for row in (0, 1, 2):
        np.testing.assert_allclose(out[row].numpy(), expected, rtol=1e-5, atol=1e-6)
    # within the honest spread: one std from the mean in every coordinate, inside the
    # honest [min, max] in nearly every one (a per-coordinate range check cannot see it)
    dev = np.abs(out[0].numpy() - honest.mean(axis=0))
    assert (dev <= honest.std(axis=0) * (1 + 1e-5) + 1e-7).all()
    inside = (out[0].numpy() >= honest.min(axis=0)) & (out[0].numpy() <= honest.max(axis=0))
    assert inside.mean() > 0.99
    assert torch.equal(out[3:], deltas[3:]) or torch.allclose(out[3:], deltas[3:], equal_nan=True)


def test_alie_z_max_follows_baruch_et_al() -> None:
    # n = 50, m = 12: s = 26 - 12 = 14, z = Phi^-1(36 / 50)
    assert F.alie_z_max(50, 12) == pytest.approx(0.5828, abs=1e-4)
    assert F.alie_z_max(30, 2) == pytest.approx(0.0836, abs=1e-4)


def test_alie_colluders_send_one_shared_update(healthy) -> None:
    faulty = _run(_fault("alie", 1.0, clients=(2, 5)))
    a, b = faulty.by_client(ONSET)["c002"], faulty.by_client(ONSET)["c005"]
    assert a["update_sketch"] == b["update_sketch"]
    assert a["update_sketch"] != healthy.by_client(ONSET)["c002"]["update_sketch"]
    assert a["label_histogram"] == healthy.by_client(ONSET)["c002"]["label_histogram"]
    _assert_healthy_untouched(faulty, healthy, victims=("c002", "c005"))


def test_ipm_sends_minus_epsilon_times_the_honest_mean(healthy) -> None:
    faulty = _run(_fault("ipm", 0.5, clients=(2, 5)))
    reps = faulty.by_client(ONSET)
    honest = np.array([r["update_sketch"] for c, r in reps.items() if c not in ("c002", "c005")])
    mean = honest.mean(axis=0)  # the sketch is linear: sketch(mean) = mean of sketches
    for cid in ("c002", "c005"):
        np.testing.assert_allclose(reps[cid]["update_sketch"], -0.5 * mean, rtol=1e-3, atol=1e-5)
        assert _cos(reps[cid]["update_sketch"], mean) == pytest.approx(-1.0, abs=1e-5)
    _assert_healthy_untouched(faulty, healthy, victims=("c002", "c005"))


def test_federation_covariate_shift_moves_every_client_at_once(healthy) -> None:
    feats = [19, 20, 21]
    spec = FaultSpec(
        kind="federation_covariate_shift",
        onset_round=ONSET,
        options={"features": feats, "shift": 3.0},
    )
    sink = RecordingSink()
    result = run_scenario(_scenario(spec), sink, progress=False)
    fb, hb = sink.by_client(ONSET), healthy.by_client(ONSET)
    assert fb.keys() == hb.keys() and len(fb) == 8
    for cid in fb:
        assert fb[cid]["label_histogram"] == hb[cid]["label_histogram"]
        for j in range(64):
            moved = fb[cid]["feature_histograms"][j] != hb[cid]["feature_histograms"][j]
            assert moved == (j in feats), (cid, j)
    assert sink.by_client(ONSET - 1) == healthy.by_client(ONSET - 1)
    assert {t["client_id"] for t in result.ground_truth} == {f"c{k:03d}" for k in range(8)}
    assert {t["scope"] for t in result.ground_truth} == {"federation"}


def test_federation_wide_and_client_faults_name_clients_or_not() -> None:
    with pytest.raises(ValidationError, match="do not list clients"):
        FaultSpec(kind="federation_covariate_shift", clients=[1])
    with pytest.raises(ValidationError, match="name at least one client"):
        FaultSpec(kind="sign_flip")
    assert FaultSpec(kind="sign_flip", clients=[1]).clients == [1]


def test_several_faults_at_different_onsets_each_act_from_their_own() -> None:
    faults = [
        FaultSpec(kind="sign_flip", clients=[2], onset_round=2),
        FaultSpec(kind="exploding_update", clients=[5], onset_round=3, severity=1.0),
    ]
    sink, clean = RecordingSink(), RecordingSink()
    result = run_scenario(_scenario(*faults), sink, progress=False)
    run_scenario(_scenario(), clean, progress=False)
    assert sink.by_client(1) == clean.by_client(1)
    r2, c2 = sink.by_client(2), clean.by_client(2)
    assert _cos(r2["c002"]["update_sketch"], c2["c002"]["update_sketch"]) == pytest.approx(-1.0)
    assert r2["c005"] == c2["c005"]  # not yet
    assert sink.by_client(3)["c005"]["update_norm"] > 50 * clean.by_client(2)["c005"]["update_norm"]
    got = {(t["client_id"], t["fault"], t["onset_round"]) for t in result.ground_truth}
    assert got == {("c002", "sign_flip", 2), ("c005", "exploding_update", 3)}


def _partial(missing: str) -> tuple[Scenario, RecordingSink]:
    scenario = _scenario(_fault("dropout", 1.0, clients=(2,)), rounds=8).model_copy(
        update={"sample_fraction": 0.5, "missing_reports": missing}
    )
    sink = RecordingSink()
    run_scenario(scenario, sink, progress=False)
    return scenario, sink


@pytest.mark.parametrize("missing", ["timeout", "omit"])
def test_partial_participation_reports_the_sampled_and_the_silent(missing: str) -> None:
    scenario, sink = _partial(missing)
    sim = Simulation(scenario)
    seen_timeout = 0
    for r in range(1, 9):
        sampled = {scenario.client_id(k) for k in sim.sample(r)}
        assert len(sampled) == 4 and sink.closes[r]["num_sampled"] == 4
        reps = sink.by_client(r)
        answered = {c for c, rep in reps.items() if rep["status"] == "ok"}
        silent = sampled - answered
        assert answered <= sampled
        if r < ONSET:
            assert answered == sampled
            continue
        assert silent == ({VICTIM} & sampled)
        if missing == "timeout":
            assert {c for c, rep in reps.items() if rep["status"] == "timeout"} == silent
            for c in silent:
                assert reps[c] == {"client_id": c, "status": "timeout"}
            seen_timeout += len(silent)
        else:
            assert reps.keys() == answered
    if missing == "timeout":
        assert seen_timeout >= 1  # the victim was sampled at least once after onset


def test_a_federation_of_1000_clients_runs_a_round() -> None:
    scenario = Scenario(
        run_id="big",
        dataset="synthetic",
        partition="natural",
        num_clients=1000,
        rounds=1,
        model="logreg",
        centralized_baseline=False,
        sample_fraction=0.3,
        missing_reports="timeout",
        faults=[FaultSpec(kind="dropout", clients=list(range(0, 1000, 10)))],
    )
    sink = RecordingSink()
    run_scenario(scenario, sink, progress=False)
    reps = sink.reports[1]
    assert len(reps) == 300 and sink.closes[1]["num_sampled"] == 300
    timeouts = {r["client_id"] for r in reps if r["status"] == "timeout"}
    assert timeouts and all(int(c[1:]) % 10 == 0 for c in timeouts)
    assert all(r["status"] == "ok" for r in reps if r["client_id"] not in timeouts)
