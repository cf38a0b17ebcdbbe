"""monitor.signals.loss_gap against plain per-client loops."""

from __future__ import annotations

import math

import numpy as np

from monitor.signals import loss_gap as lg
from monitor.signals.changepoint import relative_log_loss


def test_log_loss_gap_matches_a_loop_and_skips_what_it_cannot_read():
    tl = np.array([1.0, 2.0, 0.0, np.inf, 3.0, np.nan, 0.5])
    el = np.array([2.0, 1.0, 1.0, 1.0, -1.0, 1.0, 0.25])
    usable = np.array([True, True, True, True, True, True, False])
    got = lg.log_loss_gap(tl, el, usable)
    for i in range(len(tl)):
        ok = usable[i] and all(math.isfinite(v) and v > 0 for v in (tl[i], el[i]))
        if ok:
            assert got[i] == math.log(tl[i] / el[i])
        else:
            assert math.isnan(got[i])


def test_the_training_side_is_centred_on_the_median_client():
    # label_noise takes changepoint.relative_log_loss over its usable clients (train loss > 0)
    x = np.array([1.0, 2.0, 4.0, 8.0, np.nan, 0.0, 16.0])
    mask = np.array([True, True, True, True, True, False, False])
    got = relative_log_loss(x, mask)
    np.testing.assert_allclose(got[:4], np.log([1, 2, 4, 8]) - math.log(math.sqrt(8)))
    assert np.isnan(got[4:]).all()
    assert np.isnan(relative_log_loss(np.array([np.nan]), np.array([True]))).all()


def test_centred_move_matches_a_loop_and_needs_five_clients():
    rng = np.random.default_rng(1)
    x, ref = rng.normal(size=12), rng.normal(size=12)
    has = rng.random(12) > 0.3
    x[2] = np.nan
    got = lg.centred_move(x, ref, has)
    moves = {i: x[i] - ref[i] for i in range(12) if has[i] and math.isfinite(x[i])}
    med = float(np.median(list(moves.values())))
    for i in range(12):
        if i in moves:
            assert math.isclose(got[i], moves[i] - med, abs_tol=1e-12)
        else:
            assert math.isnan(got[i])
    four = np.array([True] * 4 + [False] * 8)
    assert np.isnan(lg.centred_move(x, ref, four)).all()


def test_cusum_high_matches_a_loop():
    rng = np.random.default_rng(7)
    rounds, clients, k, cap = 30, 8, 0.25, 1.0
    xs = rng.normal(0.1, 0.3, size=(rounds, clients))
    xs[rng.random((rounds, clients)) < 0.2] = np.nan
    xs[10:, 3] += 0.8  # a step
    e = np.zeros(clients)
    want = [0.0] * clients
    for t in range(rounds):
        e = lg.cusum_high(e, xs[t], k, cap)
        for c in range(clients):
            if math.isfinite(xs[t, c]):
                want[c] = min(cap, max(0.0, want[c] + xs[t, c] - k))
            assert math.isclose(e[c], want[c], abs_tol=1e-12)
    assert e[3] == cap


def test_cusum_high_one_clear_round_crosses_and_jitter_does_not():
    k, h = 0.25, 0.35
    one = lg.cusum_high(np.zeros(1), np.array([0.6]), k, 1.0)
    assert one[0] >= h
    s = np.zeros(1)
    for x in [0.5, 0.0, 0.5, -0.1, 0.55, -0.1]:  # honest single spikes
        s = lg.cusum_high(s, np.array([x]), k, 1.0)
        assert s[0] < h
