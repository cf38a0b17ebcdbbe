import numpy as np
import pytest
from scipy.spatial.distance import cosine

from monitor.signals import divergence as dv


def test_cosine_matches_scipy():
    rng = np.random.default_rng(0)
    s = rng.normal(size=(100, 16))
    t = rng.normal(size=16)
    got = dv.cosine_to(s, t)
    np.testing.assert_allclose(got, [1 - cosine(r, t) for r in s], atol=1e-12)
    s[0] = 0.0
    s[1, 3] = np.nan
    got = dv.cosine_to(s, t)
    assert np.isnan(got[0]) and np.isnan(got[1])
    assert np.isnan(dv.cosine_to(s, np.zeros(16))).all()


def test_robust_z_matches_definition():
    rng = np.random.default_rng(1)
    x = rng.normal(size=51)
    med = np.median(x)
    mad = np.median(np.abs(x - med))
    np.testing.assert_allclose(dv.robust_z(x), (x - med) / (1.482602218505602 * mad))
    mask = np.ones(51, dtype=bool)
    mask[0] = False
    z = dv.robust_z(x, mask)
    assert np.isfinite(z[0])  # scored, though not part of the median


def test_robust_z_mad_zero_and_small_rounds():
    x = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 5.0])
    z = dv.robust_z(x)
    scale = 1.2533141373155001 * np.mean(np.abs(x - 1.0))
    np.testing.assert_allclose(z, (x - 1.0) / scale)
    assert dv.robust_z(np.ones(6))[0] == 0.0
    assert np.isnan(dv.robust_z(np.arange(4.0))).all()


def test_norm_ratio_and_free_riders():
    norms = np.array([1.0, 2.0, 3.0, 0.0, np.nan, 0.001])
    r = dv.norm_ratio_to_median(norms)
    np.testing.assert_allclose(r[:3], [1.0, 2.0, 3.0])  # median of the five finite norms is 1
    assert np.isnan(r[4])
    np.testing.assert_array_equal(dv.free_riders(r, norms, 0.01), [0, 0, 0, 1, 0, 1])


def test_stale_updates():
    cos_prev = np.array([1.0, 0.99, 1.0, np.nan, np.nan])
    norm = np.array([2.0, 2.0, 2.5, 3.0, 3.0])
    prev = np.array([2.0, 2.0, 2.0, 3.0, 3.1])
    np.testing.assert_array_equal(dv.stale_updates(cos_prev, norm, prev), [1, 0, 0, 1, 0])


def test_nonfinite_rows_and_streaks():
    x = np.array([[1.0, 2.0], [np.nan, np.nan], [np.nan, 1.0], [np.inf, 0.0]])
    np.testing.assert_array_equal(dv.nonfinite_rows(x), [0, 0, 1, 1])
    s = dv.update_streak(np.array([2, 2, 2]), np.array([1, 0, 0], bool), np.array([1, 1, 0], bool))
    assert s.tolist() == [3, 0, 2]


@pytest.mark.parametrize("n", [10, 1000])
def test_rowwise_cosine_matches_loop(n):
    rng = np.random.default_rng(n)
    a, b = rng.normal(size=(n, 8)), rng.normal(size=(n, 8))
    np.testing.assert_allclose(
        dv.rowwise_cosine(a, b), [1 - cosine(x, y) for x, y in zip(a, b, strict=True)], atol=1e-12
    )


def test_divergence_score_needs_a_material_effect():
    # a tight IID round: z is large for small differences
    z_norm = np.array([0.0, 6.0, -6.0, 8.0, -8.0, 0.0, 0.0])
    ratio = np.array([1.0, 1.4, 0.7, 5.0, 0.2, 1.0, 1.0])
    cos = np.array([0.9, 0.9, 0.9, 0.9, 0.9, 0.5, -0.8])
    z_cos = np.array([0.0, 0.0, 0.0, 0.0, 0.0, -20.0, -50.0])
    s = dv.divergence_score(z_norm, ratio, z_cos, cos, z_cap=3.5)
    # 1.4x and 0.7x norms and a cosine 0.4 below the median are capped at the line
    assert s.tolist() == [0.0, 3.5, 3.5, 8.0, 8.0, 3.5, 50.0]
    # with the material lines at zero it is max(|z_norm|, -z_cos)
    plain = dv.divergence_score(
        z_norm, ratio, z_cos, cos, z_cap=3.5, norm_min_ratio=0.0, cosine_min_drop=-np.inf
    )
    np.testing.assert_array_equal(plain, np.fmax(np.abs(z_norm), -z_cos))
    assert np.isnan(dv.divergence_score(*(np.array([np.nan]),) * 4, z_cap=3.5)).all()


def test_leave_one_out_cosine_matches_brute_force():
    rng = np.random.default_rng(5)
    s = rng.normal(size=(12, 8))
    w = rng.integers(1, 50, size=12).astype(float)
    mask = np.ones(12, dtype=bool)
    mask[3] = False
    s[5, 2] = np.nan  # not usable: neither scored nor part of anyone's reference
    got = dv.leave_one_out_cosine(s, w, mask)
    use = [i for i in range(12) if i not in (3, 5)]
    for i in range(12):
        if i not in use:
            assert np.isnan(got[i])
            continue
        others = [j for j in use if j != i]
        ref = (w[others, None] * s[others]).sum(axis=0) / w[others].sum()
        assert got[i] == pytest.approx(1 - cosine(s[i], ref), abs=1e-12)
    # a client's own share no longer lifts its cosine: an update orthogonal to the rest scores ~0
    t = np.zeros((4, 3))
    t[0] = [10.0, 0, 0]
    t[1:] = [0, 1.0, 0]
    assert dv.leave_one_out_cosine(t)[0] == pytest.approx(0.0)
    assert dv.cosine_to(t[:1], t.mean(axis=0))[0] > 0.9
    assert np.isnan(dv.leave_one_out_cosine(s[:1])).all()


def test_leave_one_out_cosine_without_suspects_matches_brute_force():
    rng = np.random.default_rng(9)
    s = rng.normal(size=(10, 6))
    w = rng.integers(1, 30, size=10).astype(float)
    contributes = np.ones(10, dtype=bool)
    contributes[[2, 7]] = False  # suspects: judged, but nobody's reference
    got = dv.leave_one_out_cosine(s, w, None, contributes)
    for i in range(10):
        others = [j for j in range(10) if j != i and contributes[j]]
        ref = (w[others, None] * s[others]).sum(axis=0) / w[others].sum()
        assert got[i] == pytest.approx(1 - cosine(s[i], ref), abs=1e-12)
    # a crafted update sent by a suspect no longer drags an honest client's reference
    t = np.array([[1.0, 0.0], [1.0, 0.1], [-50.0, 0.0]])
    assert dv.leave_one_out_cosine(t)[0] < 0
    assert dv.leave_one_out_cosine(t, None, None, np.array([1, 1, 0], bool))[0] > 0.99
    # no other contributor: NaN
    assert np.isnan(dv.leave_one_out_cosine(t, None, None, np.array([1, 0, 0], bool))[0])


def test_cusum_low_accumulates_persistent_low_scores_only():
    e = np.zeros(3)
    # client 0 far below every round, client 1 a little below (within the allowance), 2 unobserved
    for _ in range(4):
        e = dv.cusum_low(e, np.array([-3.0, -1.0, np.nan]), allowance=1.5)
    assert e.tolist() == [6.0, 0.0, 0.0]
    # a good round drains the evidence, never below zero
    e = dv.cusum_low(
        e, np.array([2.0, 5.0, -9.0]), allowance=1.5, observed=np.array([1, 1, 0], bool)
    )
    assert e.tolist() == [2.5, 0.0, 0.0]
    # reference: Page's recursion written out
    z = np.random.default_rng(2).normal(-1, 2, size=40)
    s, ref = np.zeros(1), 0.0
    for x in z:
        s = dv.cusum_low(s, np.array([x]), allowance=0.5)
        ref = max(0.0, ref - x - 0.5)
        assert s[0] == pytest.approx(ref)


def test_identical_updates_counts_other_senders_of_the_same_vector():
    rng = np.random.default_rng(3)
    s = rng.normal(size=(6, 16))
    s[4] = s[1]
    s[5] = s[1] * (1 + 1e-9)  # same vector up to float noise
    s[2] = s[0] * 2.0  # same direction, other norm: not the same update
    norm = np.linalg.norm(s, axis=1) * 3.0  # norms of the full update, not of the sketch
    got = dv.identical_updates(s, norm)
    assert got.tolist() == [0, 2, 0, 0, 2, 2]
    mask = np.ones(6, dtype=bool)
    mask[5] = False
    assert dv.identical_updates(s, norm, mask).tolist() == [0, 1, 0, 0, 1, 0]
    assert dv.identical_updates(s[:1], norm[:1]).tolist() == [0]
