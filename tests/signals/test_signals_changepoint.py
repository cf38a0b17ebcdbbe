"""Vectorised Page-Hinkley against a plain loop (river's algorithm, one client at a time)."""

import math

import numpy as np
import pytest

from monitor.signals.changepoint import PageHinkleyState, page_hinkley_update, relative_log_loss


class LoopPageHinkley:
    """river.drift.PageHinkley (mode "up"), written out per client."""

    def __init__(self, delta, threshold, min_instances, alpha=1.0):
        self.delta, self.threshold, self.min_instances, self.alpha = (
            delta,
            threshold,
            min_instances,
            alpha,
        )
        self.reset()

    def reset(self):
        self.n, self.mean, self.cum, self.cum_min = 0, 0.0, 0.0, math.inf

    def update(self, x):
        self.n += 1
        self.mean += (x - self.mean) / self.n
        self.cum = self.alpha * self.cum + (x - self.mean - self.delta)
        self.cum_min = min(self.cum_min, self.cum)
        stat = self.cum - self.cum_min
        alarm = self.n >= self.min_instances and stat > self.threshold
        if alarm:
            self.reset()
        return stat, alarm


@pytest.mark.parametrize("alpha", [1.0, 0.95])
def test_vectorised_matches_loop(alpha):
    rng = np.random.default_rng(3)
    n, t_max = 40, 80
    x = rng.normal(0, 0.2, size=(t_max, n))
    x[30:, :5] += 1.5  # shifts
    x[50:, 5:8] += 0.4
    x[rng.random((t_max, n)) < 0.1] = np.nan  # missing reports
    loops = [LoopPageHinkley(0.1, 1.5, 5, alpha) for _ in range(n)]
    st = PageHinkleyState.empty(n)
    alarms_seen = 0
    for t in range(t_max):
        st, stat, alarm = page_hinkley_update(st, x[t], 0.1, 1.5, 5, alpha)
        for i in range(n):
            if np.isnan(x[t, i]):
                assert np.isnan(stat[i]) and not alarm[i]
                continue
            s, a = loops[i].update(x[t, i])
            assert stat[i] == pytest.approx(s, rel=1e-12, abs=1e-12)
            assert alarm[i] == a
            alarms_seen += a
    assert alarms_seen >= 5


def test_detects_increase_at_the_right_round_and_not_decrease():
    n = 3
    st = PageHinkleyState.empty(n)
    first = {}
    for t in range(40):
        x = np.array([0.0, 0.0 if t < 20 else 2.0, 0.0 if t < 20 else -2.0])
        st, _, alarm = page_hinkley_update(st, x, delta=0.1, threshold=1.5, min_instances=5)
        for i in np.flatnonzero(alarm):
            first.setdefault(int(i), t)
    assert first == {1: 20}


def test_relative_log_loss_removes_common_trend():
    loss = np.array([1.0, 2.0, 4.0, np.nan, np.inf])
    r = relative_log_loss(loss)
    np.testing.assert_allclose(r[:3], np.log([0.5, 1.0, 2.0]))
    assert np.isnan(r[3]) and np.isnan(r[4])
    np.testing.assert_allclose(relative_log_loss(loss * 7.0)[:3], r[:3])
