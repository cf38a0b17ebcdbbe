import math

import numpy as np
import pytest

from monitor.signals import fairness as fa


def brute_gini(x):
    x = np.asarray(x, float)
    return sum(abs(a - b) for a in x for b in x) / (2 * len(x) ** 2 * x.mean())


def brute_jain(x):
    return sum(x) ** 2 / (len(x) * sum(v * v for v in x))


@pytest.mark.parametrize("seed", range(5))
def test_gini_and_jain_match_brute_force(seed):
    x = np.random.default_rng(seed).uniform(0, 1, size=37)
    assert fa.gini(x) == pytest.approx(brute_gini(x), rel=1e-12)
    assert fa.jain_index(x) == pytest.approx(brute_jain(x), rel=1e-12)


def test_equal_and_degenerate():
    assert fa.gini([0.7] * 5) == pytest.approx(0.0, abs=1e-15)
    assert fa.jain_index([0.7] * 5) == pytest.approx(1.0)
    assert fa.jain_index([1.0, 0, 0, 0]) == pytest.approx(0.25)
    assert math.isnan(fa.gini([])) and math.isnan(fa.jain_index([0.0, 0.0]))


def test_summary():
    acc = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.95, 0.85, np.nan])
    s = fa.fairness_summary(acc, floor=0.5)
    v = acc[np.isfinite(acc)]
    assert s["accuracy_mean"] == pytest.approx(v.mean())
    assert s["accuracy_std"] == pytest.approx(v.std())
    assert s["accuracy_min"] == 0.1 and s["accuracy_gap"] == pytest.approx(0.85)
    assert s["accuracy_worst10_mean"] == pytest.approx((0.1 + 0.2) / 2)  # ceil(0.1 * 11) = 2
    assert s["accuracy_share_below_floor"] == pytest.approx(4 / 11)
    assert s["accuracy_clients"] == 11
    assert math.isnan(fa.fairness_summary(np.array([np.nan]))["accuracy_mean"])


def test_regression_and_benefit():
    mean = np.array([0.70, 0.71, 0.72, 0.73, 0.74])
    worst = np.array([0.40, 0.38, 0.36, 0.34, 0.32])
    m, w = fa.fairness_regression(mean, worst)
    assert m == pytest.approx(0.04) and w == pytest.approx(-0.08)
    np.testing.assert_allclose(fa.federation_benefit([0.8, 0.5], [0.7, np.nan]), [0.1, np.nan])


def test_worst_fraction_noise_sd_matches_binomial_simulation():
    from monitor.signals.fairness import worst_fraction_noise_sd

    rng = np.random.default_rng(4)
    p = rng.uniform(0.5, 0.95, size=40)
    n = rng.integers(8, 30, size=40)
    k = 4  # ceil(0.1 * 40)
    worst = np.argsort(p)[:k]
    got = worst_fraction_noise_sd(p, n, 0.1)
    # the same k clients, their accuracies redrawn as binomial proportions
    draws = rng.binomial(n[worst], p[worst], size=(200_000, k)) / n[worst]
    smoothed = (p[worst] * n[worst] + 1) / (n[worst] + 2)
    exact = np.sqrt((smoothed * (1 - smoothed) / n[worst]).sum()) / k
    assert got == pytest.approx(exact)
    assert got == pytest.approx(draws.mean(axis=1).std(), rel=0.05)  # smoothing moves it a little
    assert np.isnan(worst_fraction_noise_sd(p, np.zeros(40), 0.1))
    assert worst_fraction_noise_sd(np.array([1.0, 0.0]), np.array([10, 10]), 0.5) > 0


def test_series_noise_and_change_noise_sd():
    from monitor.signals.fairness import change_noise_sd, fairness_regression, series_noise_sd

    rng = np.random.default_rng(6)
    y = 0.5 + 0.01 * np.arange(400) + rng.normal(0, 0.03, 400)  # a trend plus noise of sd 0.03
    assert series_noise_sd(y) == pytest.approx(0.03, rel=0.15)
    assert np.isnan(series_noise_sd(np.array([1.0, 2.0])))
    # the fitted change over a window of pure noise has the sd the formula says
    w, sigma = 5, 0.04
    changes = [fairness_regression(np.zeros(w), rng.normal(0, sigma, w))[1] for _ in range(20_000)]
    assert change_noise_sd(sigma, w) == pytest.approx(np.std(changes), rel=0.03)
    assert change_noise_sd(sigma, w) == pytest.approx(1.2649 * sigma, rel=1e-3)
    assert np.isnan(change_noise_sd(sigma, 1))


@pytest.mark.parametrize("n", [1, 2, 9, 10, 11, 37])
def test_rest_fraction_mean_is_the_mean_outside_the_worst_fraction(n):
    x = np.random.default_rng(n).uniform(0, 1, size=n)
    k = max(1, math.ceil(0.1 * n))
    brute = sorted(x)[k:]
    got = fa.rest_fraction_mean(np.append(x, np.nan), 0.1)
    if not brute:
        assert math.isnan(got)
    else:
        assert got == pytest.approx(sum(brute) / len(brute), rel=1e-12)
        # the worst fraction and the rest make up the whole
        w = fa.worst_fraction_mean(x, 0.1)
        assert (k * w + (n - k) * got) / n == pytest.approx(x.mean(), rel=1e-12)
