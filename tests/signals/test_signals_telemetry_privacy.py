"""Telemetry privacy math against references: brute force, Opacus' accountant, the exact Gaussian curve."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.stats import norm

from monitor.signals import telemetry_privacy as tp


def _histograms(records: list[tuple[int, ...]], bins: tuple[int, ...]) -> np.ndarray:
    """All H histograms of a dataset, concatenated (record = one bin index per histogram)."""
    parts = [np.bincount([r[h] for r in records], minlength=b) for h, b in enumerate(bins)]
    return np.concatenate(parts).astype(float)


@pytest.mark.parametrize("bins", [(3,), (3, 2), (2, 3, 4)])
def test_l2_sensitivity_is_the_brute_force_maximum_over_one_replaced_record(bins) -> None:
    all_records = list(itertools.product(*[range(b) for b in bins]))
    rng = np.random.default_rng(0)
    data = [all_records[i] for i in rng.integers(0, len(all_records), 5)]
    base = _histograms(data, bins)
    worst = 0.0
    for i, new in itertools.product(range(len(data)), all_records):
        other = data[:i] + [new] + data[i + 1 :]
        worst = max(worst, float(np.linalg.norm(_histograms(other, bins) - base)))
        l1 = float(np.abs(_histograms(other, bins) - base).sum())
        assert l1 <= tp.histogram_l1_sensitivity(len(bins)) + 1e-12
    assert worst == pytest.approx(tp.histogram_l2_sensitivity(len(bins)))
    assert worst == pytest.approx(math.sqrt(2 * len(bins)))


def test_planned_releases_and_schedule() -> None:
    assert tp.planned_releases(30, 1) == 30
    assert tp.planned_releases(30, 4) == 8
    assert tp.planned_releases(1, 5) == 1
    with pytest.raises(ValueError):
        tp.planned_releases(0)
    # every 3 rounds, 2 releases at most, counted from the client's own last release
    done, last, released = 0, None, []
    for rnd in [1, 2, 3, 5, 6, 8, 9, 12]:
        if tp.is_release_round(rnd, last, done, 2, 3):
            done, last = done + 1, rnd
            released.append(rnd)
    assert released == [1, 5]


def test_epsilon_matches_opacus_rdp_accountant_step_by_step() -> None:
    """Heterogeneous multipliers composed by one inverse-square sum = Opacus' history, exactly."""
    from opacus.accountants import RDPAccountant

    rng = np.random.default_rng(3)
    zs = rng.uniform(1.5, 8.0, size=12)
    acct = RDPAccountant()
    for z in zs:
        acct.step(noise_multiplier=float(z), sample_rate=1.0)
    ours = tp.epsilon_from_rdp_terms(float((zs**-2.0).sum()), 0.0, 1e-5)
    assert ours == pytest.approx(acct.get_epsilon(1e-5, alphas=list(tp.ORDERS)), rel=1e-12)
    # the optimum order is inside Opacus' default orders here, so its defaults agree too
    assert ours == pytest.approx(acct.get_epsilon(1e-5), rel=1e-9)


def test_gaussian_rdp_of_q1_is_alpha_over_two_z_squared() -> None:
    """Mironov 2017, Prop. 7: the Gaussian mechanism's RDP at order alpha is alpha / (2 z^2)."""
    rdp = tp._rdp_analysis()
    orders = [1.5, 2.0, 8.0, 32.0]
    got = rdp.compute_rdp(q=1.0, noise_multiplier=2.5, steps=7, orders=orders)
    assert np.allclose(got, [7 * a / (2 * 2.5**2) for a in orders])


def _exact_gaussian_delta(eps: float, mu: float) -> float:
    """Balle & Wang 2018 (Thm. 8): exact delta(eps) of a Gaussian mechanism with mu = Delta/sigma."""
    return norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * norm.cdf(-eps / mu - mu / 2)


@pytest.mark.parametrize("epsilon,releases", [(10.0, 30), (3.0, 30), (1.0, 30), (1.0, 1), (3.0, 6)])
def test_calibration_holds_against_the_exact_gaussian_curve(epsilon, releases) -> None:
    """T Gaussian releases with multiplier z are exactly one with z / sqrt(T) (mu-GDP composition).

    The calibrated z must (1) meet the budget exactly under the accountant, (2) be
    sound: the exact delta at the budget's epsilon is below delta, and (3) not
    waste much: RDP overstates the exact epsilon by 7-10% here.
    """
    delta = 1e-5
    z = tp.calibrate_noise_multiplier(epsilon, delta, releases)
    assert tp.gaussian_epsilon(z, releases, delta) <= epsilon
    assert tp.gaussian_epsilon(z * (1 - 1e-4), releases, delta) > epsilon  # smallest such z
    mu = math.sqrt(releases) / z
    assert _exact_gaussian_delta(epsilon, mu) <= delta
    exact_eps = brentq(lambda e: _exact_gaussian_delta(e, mu) - delta, 1e-6, 100.0)
    assert 1.0 < epsilon / exact_eps < 1.12


def test_reference_multipliers_for_the_benchmark_budgets() -> None:
    """The noise the detection benchmark runs at (30 releases, delta 1e-5), pinned."""
    assert tp.calibrate_noise_multiplier(10.0, 1e-5, 30) == pytest.approx(2.9007, rel=1e-4)
    assert tp.calibrate_noise_multiplier(3.0, 1e-5, 30) == pytest.approx(8.1786, rel=1e-4)
    assert tp.calibrate_noise_multiplier(1.0, 1e-5, 30) == pytest.approx(22.157, rel=1e-4)


def test_release_terms_unprotected_and_laplace() -> None:
    inv, pure = tp.release_terms(
        np.array(["gaussian", "laplace", None, "gaussian", None], dtype=object),
        np.array([4.0, 2.0, 0.0, 0.0, 0.0]),
        np.array([2, 3, 1, 1, 0]),
    )
    assert inv[0] == pytest.approx(2 * 2 / 16.0)  # (sqrt(2H) / sigma)^2
    assert pure[1] == pytest.approx(2 * 3 / 2.0)  # 2H / b
    assert math.isinf(pure[2])  # histograms without noise: no protection
    assert math.isinf(inv[3])  # declared gaussian with sigma 0
    assert inv[4] == 0 and pure[4] == 0  # nothing released
    assert math.isinf(tp.epsilon_from_rdp_terms(0.0, math.inf, 1e-5))
    assert tp.epsilon_from_rdp_terms(0.0, 0.0, 1e-5) == 0.0
    # pure-DP releases: never above their basic composition, plus the conversion's slack
    e = tp.epsilon_from_rdp_terms(0.0, 3.0, 1e-5)
    assert 3.0 < e < 3.0 + 0.5


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError):
        tp.calibrate_noise_multiplier(0.0, 1e-5, 3)
    with pytest.raises(ValueError):
        tp.calibrate_noise_multiplier(math.inf, 1e-5, 3)
    with pytest.raises(ValueError):
        tp.epsilon_from_rdp_terms(1.0, 0.0, 0.0)
