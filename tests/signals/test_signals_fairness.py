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
