"""Drift statistics against SciPy, brute force and raw samples."""

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import chi2, ks_2samp, wasserstein_distance

from monitor.signals import drift

RNG = np.random.default_rng(7)


def test_js_distance_matches_scipy_base2():
    p = RNG.dirichlet(np.full(8, 0.3), size=200) * 100
    q = RNG.dirichlet(np.full(8, 0.3), size=200)
    p[:10, :3] = 0.0  # empty bins
    got = drift.js_distance(p, q)
    want = np.array([jensenshannon(a, b, base=2) for a, b in zip(p, q, strict=True)])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    assert np.all((got >= 0) & (got <= 1))


def test_js_distance_edge_cases():
    assert drift.js_distance(np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]]))[0] == pytest.approx(
        1.0
    )
    assert drift.js_distance(np.array([[3.0, 1.0]]), np.array([[6.0, 2.0]]))[0] == pytest.approx(
        0.0, abs=1e-7
    )
    out = drift.js_distance(np.array([[0.0, 0.0], [1.0, 1.0]]), np.array([1.0, 1.0]))
    assert np.isnan(out[0]) and out[1] == pytest.approx(0.0, abs=1e-7)


def test_psi_matches_brute_force():
    p = RNG.dirichlet(np.ones(10), size=50)
    q = RNG.dirichlet(np.ones(10), size=50)
    p[0, 0] = 0.0
    eps = 1e-4
    got = drift.psi(p, q, eps)
    for i in range(50):
        a = p[i] / p[i].sum()
        b = q[i] / q[i].sum()
        a = (a + eps) / (1 + 10 * eps)
        b = (b + eps) / (1 + 10 * eps)
        want = sum((bj - aj) * np.log(bj / aj) for aj, bj in zip(a, b, strict=True))
        assert got[i] == pytest.approx(want, rel=1e-12)
    assert drift.psi(p, p)[0] == pytest.approx(0.0, abs=1e-15)


def _raw_and_hist(n, loc, scale, edges, rng):
    x = np.clip(rng.normal(loc, scale, n), edges[0] + 1e-9, edges[-1] - 1e-9)
    h, _ = np.histogram(x, bins=edges)
    return x, h.astype(float)


def test_wasserstein_matches_scipy_on_centres_and_raw_within_binning():
    edges = np.linspace(-4, 4, 21)
    c = drift.bin_centres(edges)
    for shift in (0.0, 0.3, 1.0, 2.0):
        xr, hr = _raw_and_hist(5000, 0.0, 1.0, edges, RNG)
        xc, hc = _raw_and_hist(5000, shift, 1.0, edges, RNG)
        got = drift.wasserstein_hist(hr[None], hc[None], edges)[0]
        assert got == pytest.approx(wasserstein_distance(c, c, hr, hc), rel=1e-10, abs=1e-12)
        assert abs(got - wasserstein_distance(xr, xc)) <= np.diff(edges).max()
        std = drift.hist_std(hr[None], edges)[0]
        assert std == pytest.approx(xr.std(), abs=np.diff(edges).max() / 2)
        scaled = drift.wasserstein_hist(hr[None], hc[None], edges, np.array([std]))[0]
        assert scaled == pytest.approx(got / std)


def test_ks_hist_is_a_lower_bound_of_raw_ks_within_bin_mass():
    edges = np.linspace(-4, 4, 11)
    for shift in (0.0, 0.2, 0.7):
        xr, hr = _raw_and_hist(3000, 0.0, 1.0, edges, RNG)
        xc, hc = _raw_and_hist(2000, shift, 1.3, edges, RNG)
        d = drift.ks_hist(hr[None], hc[None])[0]
        raw = ks_2samp(xr, xc).statistic
        max_bin_mass = max((hr / hr.sum()).max(), (hc / hc.sum()).max())
        assert d <= raw + 1e-12
        assert raw - d <= max_bin_mass


def test_hist_std_never_zero():
    edges = np.array([0.0, 1.0, 2.0])
    assert drift.hist_std(np.array([[5.0, 0.0]]), edges)[0] == pytest.approx(1 / np.sqrt(12))


def test_noise_variance():
    mech = np.array(["laplace", "gaussian", None], dtype=object)
    np.testing.assert_allclose(
        drift.noise_variance(mech, np.array([2.0, 3.0, 5.0])), [8.0, 9.0, 0.0]
    )


def test_denoise_and_normalize():
    p, tot = drift.normalize_rows(drift.denoise(np.array([[-1.0, 3.0], [0.0, 0.0], [np.nan, 1.0]])))
    np.testing.assert_allclose(p[0], [0.0, 1.0])
    assert tot[0] == 3.0 and np.isnan(p[1]).all() and np.isnan(p[2]).all()


@pytest.mark.parametrize("d", [1, 2, 5, 9, 30, 200])
def test_wilson_hilferty_chi2_quantile(d):
    for q in (0.99, 0.999):
        assert drift.chi2_quantile_wh(q, np.array([d]))[0] == pytest.approx(
            chi2.ppf(q, d), rel=0.04
        )


def test_top_movers():
    idx, dlt = drift.top_movers(np.array([[50, 30, 20.0]]), np.array([[10, 30, 60.0]]), k=2)
    assert idx.tolist() == [[0, 2]]
    np.testing.assert_allclose(dlt, [[-0.4, 0.4]])


@pytest.mark.parametrize(
    "noise",
    [None, ("laplace", 3.0), ("gaussian", 8.0)],
)
@pytest.mark.parametrize("alpha_dir", [0.1, 1.0])
def test_null_quantiles_bound_false_alarms(noise, alpha_dir):
    """Monte Carlo under no change: each statistic exceeds its null quantile rarely."""
    rng = np.random.default_rng(11)
    sims, b, n_cur, k_ref = 4000, 10, 200, 3
    p = rng.dirichlet(np.full(b, alpha_dir), size=sims)
    ref = sum(rng.multinomial(n_cur, p).astype(float) for _ in range(k_ref))
    cur = rng.multinomial(n_cur, p).astype(float)
    v = np.zeros(sims)
    if noise:
        mech, s = noise
        draw = rng.laplace if mech == "laplace" else rng.normal
        ref = ref + sum(draw(0, s, size=(sims, b)) for _ in range(k_ref))
        cur = cur + draw(0, s, size=(sims, b))
        v = drift.noise_variance(np.full(sims, mech, dtype=object), np.full(sims, s))
    ref, cur = drift.denoise(ref), drift.denoise(cur)
    nr, nc = ref.sum(1), cur.sum(1)
    m = (ref + 0.5) / (nr + 0.5 * b)[:, None]
    vr = k_ref * v
    alpha = 0.01
    edges = np.linspace(-1, 1, b + 1)
    scale = drift.hist_std(ref, edges)
    eps = drift.psi_smoothing(nc, nr, v, vr)
    rates = {
        "js": np.mean(
            drift.js_distance(ref, cur) ** 2 > drift.js_null_quantile(m, nc, nr, v, vr, alpha)
        ),
        "psi": np.mean(drift.psi(ref, cur, eps) > drift.psi_null_quantile(m, nc, nr, v, vr, alpha)),
        "ks": np.mean(drift.ks_hist(ref, cur) > drift.ks_null_quantile(m, nc, nr, v, vr, alpha)),
        "w": np.mean(
            drift.wasserstein_hist(ref, cur, edges, scale)
            > drift.wasserstein_null_quantile(m, nc, nr, v, vr, edges, scale, alpha)
        ),
    }
    for name, rate in rates.items():
        assert rate <= 3 * alpha, (name, rate)
