import numpy as np

from monitor.signals import divergence as dv
from monitor.signals import norm_reference as nr


def _brute_reference(values, use, need, rate, band):
    """One client's reference, round by round, as the docstring says."""
    ref, n, out = np.nan, 0, []
    for v, u in zip(values, use, strict=True):
        if u and np.isfinite(v):
            if n < need:
                ref = v if n == 0 else ref + (v - ref) / (n + 1)
                n += 1
            else:
                ref += rate * min(max(v - ref, -np.log(band)), np.log(band))
        out.append((ref, n))
    return out


def test_update_reference_matches_a_loop():
    rng = np.random.default_rng(3)
    rounds, clients = 12, 6
    vals = rng.normal(0.0, 0.3, size=(rounds, clients))
    vals[5:, 2] += 2.0  # a step: learnt at most rate * ln(band) a round
    vals[3, 4] = np.nan
    use = rng.random((rounds, clients)) > 0.2
    ref, cnt = np.zeros(clients), np.zeros(clients, dtype=np.int64)
    got = []
    for t in range(rounds):
        before = ref.copy()
        ref, cnt = nr.update_reference(ref, cnt, vals[t], use[t], need=3, rate=0.1, band=1.5)
        assert before is not ref
        got.append((ref.copy(), cnt.copy()))
    for c in range(clients):
        want = _brute_reference(vals[:, c], use[:, c], 3, 0.1, 1.5)
        for t, (r, n) in enumerate(want):
            assert got[t][1][c] == n
            if n:
                np.testing.assert_allclose(got[t][0][c], r, rtol=1e-12)
    # the step client's reference moved by at most rate * ln(band) a round
    first = vals[:5, 2][use[:5, 2]][:3].mean()
    assert 0 < ref[2] - first <= 0.1 * np.log(1.5) * rounds


def test_self_referenced_norm_judges_against_the_client_usual():
    # log ratios: clients 0-5 sit at their usual; 6 is usually 4x and still is;
    # 7 is usually 1x and jumps to 4x; 8 is usually 4x and jumps to 40x;
    # 9 is usually 0.25x and comes back to 1x; 10 has no usual and is 4x; 11 none, 8x
    usual = np.log([1, 1, 1, 1, 1, 1, 4, 1, 4, 0.25, 1, 1])
    now = np.log([1.02, 0.98, 1.01, 0.99, 1.0, 1.03, 4.1, 4.0, 40.0, 1.0, 4.0, 8.0])
    has = np.array([True] * 10 + [False, False])
    z_round = dv.robust_z(now)
    z, mat = nr.self_referenced_norm(
        now,
        z_round,
        usual,
        has,
        np.ones(12, dtype=bool),
        min_ratio=3.0,
        min_change=3.0,
        unreferenced_ratio=6.0,
    )
    assert mat.tolist() == [False] * 6 + [False, True, True, False, False, True]
    d = now - usual
    np.testing.assert_allclose(z[:10], dv.robust_z(np.where(has, d, np.nan), has)[:10])
    np.testing.assert_array_equal(z[10:], z_round[10:])
    # too few referenced clients: the round's z stands in
    few = np.zeros(12, dtype=bool)
    few[:3] = True
    z2, _ = nr.self_referenced_norm(
        now,
        z_round,
        usual,
        few,
        np.ones(12, dtype=bool),
        min_ratio=3.0,
        min_change=3.0,
        unreferenced_ratio=6.0,
    )
    np.testing.assert_array_equal(z2, z_round)
    # a smaller change from the usual may be enough, the round's line still holds:
    # 2.5x its usual at 2.5x the median is not far from the round
    now2 = now.copy()
    now2[7] = np.log(2.5)
    _, mat3 = nr.self_referenced_norm(
        now2,
        z_round,
        usual,
        has,
        np.ones(12, dtype=bool),
        min_ratio=3.0,
        min_change=2.0,
        unreferenced_ratio=6.0,
    )
    assert not mat3[7] and mat3[8]


def test_divergence_score_takes_the_norm_material_test():
    z_norm = np.array([8.0, 8.0, 0.0])
    ratio = np.array([5.0, 5.0, 1.0])
    cos = np.array([0.9, 0.9, 0.9])
    s = dv.divergence_score(
        z_norm, ratio, np.zeros(3), cos, z_cap=3.5, norm_material=np.array([True, False, False])
    )
    assert s.tolist() == [8.0, 3.5, 0.0]
