"""Vectorised Page-Hinkley against a plain loop (river's algorithm, one client at a time)."""

import math

import numpy as np
import pytest

from monitor.signals.changepoint import (
    PageHinkleyState,
    own_loss_rise,
    page_hinkley_reset,
    page_hinkley_update,
    relative_log_loss,
)


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


def test_own_loss_rise_against_a_plain_loop():
    rng = np.random.default_rng(4)
    x = rng.normal(0.0, 0.3, size=(25, 6)) + np.linspace(0, 1, 25)[:, None]
    x[rng.random(x.shape) < 0.15] = np.nan  # rounds a client did not report
    ewma, best = np.full(6, np.nan), np.full(6, np.inf)
    loop_e, loop_b = [None] * 6, [math.inf] * 6
    for t in range(25):
        rise, ewma, best = own_loss_rise(x[t], ewma, best, weight=0.5)
        for i in range(6):
            v = x[t, i]
            if math.isnan(v):
                assert math.isnan(rise[i])
                continue
            want = v - loop_b[i] if math.isfinite(loop_b[i]) else math.nan
            assert rise[i] == pytest.approx(want, nan_ok=True)
            loop_e[i] = v if loop_e[i] is None else 0.5 * loop_e[i] + 0.5 * v
            loop_b[i] = min(loop_b[i], loop_e[i])
        assert np.allclose(best, loop_b)


def test_a_gated_alarm_keeps_its_evidence_until_reset():
    st = PageHinkleyState.empty(2)
    for v in [0.0] * 5 + [2.0, 2.0]:
        st, stat, alarm = page_hinkley_update(
            st, np.array([v, v]), delta=0.1, threshold=1.5, reset_on_alarm=False
        )
    assert alarm.all()
    st = page_hinkley_reset(st, np.array([True, False]))
    assert st.n[0] == 0 and st.cum_min[0] == math.inf and st.n[1] == 7
    st, stat, alarm = page_hinkley_update(
        st, np.array([2.0, 2.0]), delta=0.1, threshold=1.5, reset_on_alarm=False
    )
    assert not alarm[0] and alarm[1]
