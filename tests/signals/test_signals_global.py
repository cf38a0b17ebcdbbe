"""Participation, global health and privacy."""

import math

import numpy as np
import pytest

from monitor.signals import health, participation, privacy


def test_status_counts_and_ratio():
    s = np.array(["ok", "ok", "failed", "timeout", "dropped", "ok"], dtype=object)
    assert participation.status_counts(s) == {"ok": 3, "failed": 1, "dropped": 1, "timeout": 1}
    assert participation.participation_ratio(3, 4) == 0.75
    assert math.isnan(participation.participation_ratio(3, 0))


def test_dropout_streaks_and_stragglers():
    s = participation.dropout_streaks(
        np.array([0, 2, 5, 1]), np.array([1, 1, 0, 0], bool), np.array([0, 0, 1, 0], bool)
    )
    assert s.tolist() == [1, 3, 0, 1]
    t = np.full(20, 10.0) * np.exp(np.linspace(-0.1, 0.1, 20))
    t[3] = 100.0
    z = participation.straggler_z(t)
    assert np.argmax(z) == 3 and z[3] > 10
    ratio = participation.wall_time_ratio(t)
    assert ratio[3] == pytest.approx(100.0 / np.median(t))
    masked = participation.wall_time_ratio(
        np.array([1.0, 2.0, np.nan, 0.0, 4.0]), np.array([1, 1, 1, 1, 0], bool)
    )
    assert (
        masked[:2].tolist() == [pytest.approx(2 / 3), pytest.approx(4 / 3)]
        and np.isnan(masked[2:]).all()
    )


def test_stagnation_and_jumps():
    assert math.isnan(health.stagnation(np.ones(5), window=10))
    falling = 1.0 / np.arange(1, 30)
    assert health.stagnation(falling, 10) > 0.2
    assert health.stagnation(np.r_[falling, np.full(10, falling[-1])], 10) == pytest.approx(0.0)
    assert health.loss_jump_ratio(2.0, np.array([1.0, 1.0, 1.0])) == 2.0
    assert health.loss_jump_ratio(float("nan"), np.ones(3)) != health.loss_jump_ratio(
        float("nan"), np.ones(3)
    )
    assert health.loss_jump_ratio(float("inf"), np.ones(3)) == math.inf


def test_nonfinite_aggregate_and_gap():
    assert not health.nonfinite_aggregate(None, None, None)
    assert health.nonfinite_aggregate(float("nan"), 1.0, None)
    assert health.nonfinite_aggregate(1.0, 1.0, np.array([0.0, np.inf]))
    assert health.centralized_gap(0.9, 0.8) == pytest.approx(0.1)
    assert math.isnan(health.centralized_gap(None, 0.8))


@pytest.mark.parametrize(
    "q,sigma,steps,eps",
    [(0.1, 1.0, 10, 3.441), (0.1, 1.0, 100, 7.899), (0.01, 1.0, 1000, 2.101)],
)
def test_epsilon_matches_opacus_reference_values(q, sigma, steps, eps):
    assert privacy.dp_fedavg_epsilon(sigma, q, steps, 1e-5) == pytest.approx(eps, abs=1e-3)


def test_epsilon_equals_stepwise_accountant():
    from opacus.accountants import RDPAccountant

    acct = RDPAccountant()
    for _ in range(37):
        acct.step(noise_multiplier=1.3, sample_rate=0.05)
    assert privacy.dp_fedavg_epsilon(1.3, 0.05, 37, 1e-6) == pytest.approx(
        acct.get_epsilon(1e-6), rel=1e-12
    )
    assert privacy.dp_fedavg_epsilon(1.0, 0.1, 0, 1e-5) == 0.0
    assert privacy.dp_fedavg_epsilon(0.0, 0.1, 3, 1e-5) == math.inf
    assert privacy.budget_share(4.0, 8.0) == 0.5 and math.isnan(privacy.budget_share(4.0, None))


def test_converged_tells_a_settled_run_from_a_stuck_one():
    t = np.arange(30, dtype=float)
    settled_loss = 0.5 + 1.5 * np.exp(-t / 2.5)  # learned, then flat
    shrinking = 0.6 * np.exp(-t / 10)
    assert health.converged(settled_loss, shrinking, 10)
    # flat from the start: never learned
    assert not health.converged(np.full(30, 2.0), shrinking, 10)
    # learned, but still taking steps as large as at the start (oscillating, not settling)
    assert not health.converged(settled_loss, np.full(30, 0.6), 10)
    assert not health.converged(settled_loss, shrinking[:15], 10)  # too short to tell
    # consistent with stagnation: the settled run does stagnate
    assert health.stagnation(settled_loss, 10) < 0.005


def test_absence_p_value_is_the_sampling_chance():
    p = participation.absence_p_value(np.array([0, 1, 10, 20]), 0.3)
    np.testing.assert_allclose(p, [1.0, 0.7, 0.7**10, 0.7**20])
    # against a simulation of independent sampling
    rng = np.random.default_rng(0)
    runs = rng.random((200_000, 6)) < 0.5
    assert (~runs).all(axis=1).mean() == pytest.approx(
        participation.absence_p_value(np.array([6]), 0.5)[0], rel=0.05
    )
    assert np.isnan(participation.absence_p_value(np.array([3]), 0.0)).all()
    assert participation.absence_p_value(np.array([5]), 1.0)[0] == 0.0


def test_own_time_reference_is_an_ewma_of_log_time_over_masked_rounds():
    """Brute force: each client's EWMA of ln t over the rounds its mask was set."""
    from monitor.signals.participation import own_time_ratio, own_time_reference

    rng = np.random.default_rng(4)
    t = rng.lognormal(0.0, 0.5, (12, 6))
    mask = rng.random((12, 6)) > 0.3
    ref = np.full(6, np.nan)
    for r in range(12):
        ratio = own_time_ratio(t[r], ref)
        for k in range(6):
            past = [np.log(t[s, k]) for s in range(r) if mask[s, k]]
            e = np.nan
            for x in past:
                e = x if np.isnan(e) else 0.7 * e + 0.3 * x
            assert np.isnan(ratio[k]) == np.isnan(e)
            if past:
                assert ratio[k] == pytest.approx(t[r, k] / np.exp(e))
        ref = own_time_reference(ref, t[r], mask[r])


def test_straggler_evidence_needs_the_own_ratio_or_an_extreme_one():
    from monitor.signals.participation import straggler_evidence

    ok = np.ones(4, bool)
    z = np.array([5.0, 5.0, 5.0, 1.0])
    ratio = np.array([4.0, 4.0, 12.0, 12.0])
    own = np.array([4.0, 1.1, np.nan, 12.0])
    s, slow, a = straggler_evidence(ok, z, ratio, own, (3.5, 3.0), (3.0, 10.0))
    assert s.tolist() == [True, False, True, False]
    assert slow.tolist() == [True, False, False, True]
    assert a[0] >= 1.0 and a[1] < 1.0 and a[2] >= 1.0 and a[3] < 1.0
