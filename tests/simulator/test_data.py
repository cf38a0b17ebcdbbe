"""The datasets: bundled sets load as documented; Synthetic(alpha, beta) follows FedProx's recipe."""

from __future__ import annotations

import numpy as np
import pytest

from simulator.data import (
    load_breast_cancer_dataset,
    load_dataset,
    load_digits_dataset,
    make_synthetic,
    synthetic_client_sizes,
)


def test_bundled_datasets_shapes_and_ranges() -> None:
    digits = load_digits_dataset()
    assert digits.X.shape == (1797, 64) and digits.X.dtype == np.float32
    assert digits.X.min() == 0.0 and digits.X.max() == 1.0
    assert set(np.unique(digits.y)) == set(range(10))
    bc = load_breast_cancer_dataset()
    assert bc.X.shape == (569, 30) and bc.num_classes == 2
    np.testing.assert_allclose(bc.X.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(bc.X.std(axis=0), 1.0, atol=1e-4)
    assert len(bc.feature_names) == 30 and " " not in "".join(bc.feature_names)
    wine = load_dataset("wine", num_clients=3, rng=np.random.default_rng(0))
    assert wine.X.shape == (178, 13) and wine.num_classes == 3
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("mnist", num_clients=3, rng=np.random.default_rng(0))


def test_synthetic_client_sizes_follow_lognormal_4_2() -> None:
    sizes = synthetic_client_sizes(40_000, np.random.default_rng(1))
    assert sizes.min() >= 50
    base = sizes - 50  # int(LogNormal(4, 2))
    # median of LogNormal(4, 2) is e^4 = 54.6; int() truncates
    assert abs(np.median(base) - 54) <= 3
    # P(LogNormal(4,2) >= e^6) = P(Z >= 1) = 0.1587
    assert abs(np.mean(base >= np.exp(6)) - 0.1587) < 0.01


def test_synthetic_matches_the_recipe_moments() -> None:
    alpha, beta, k = 1.0, 1.0, 300
    ds, truth = make_synthetic(alpha, beta, k, np.random.default_rng(2), max_examples=400)
    assert ds.X.shape[1] == 60 and ds.num_classes == 10
    assert len(ds.natural_clients) == k
    assert [len(ix) for ix in ds.natural_clients] == truth.sizes.tolist()
    # u_k ~ N(0, alpha), B_k ~ N(0, beta): standard deviations, not variances
    assert abs(truth.u.std() - alpha) < 0.12 and abs(truth.u.mean()) < 0.15
    assert abs(truth.B.std() - beta) < 0.12 and abs(truth.B.mean()) < 0.15
    # W_k, b_k ~ N(u_k, 1); v_k ~ N(B_k, 1)
    w_resid = truth.W - truth.u[:, None, None]
    assert abs(w_resid.mean()) < 0.01 and abs(w_resid.std() - 1.0) < 0.01
    assert abs((truth.b - truth.u[:, None]).std() - 1.0) < 0.03
    v_resid = truth.v - truth.B[:, None]
    assert abs(v_resid.mean()) < 0.02 and abs(v_resid.std() - 1.0) < 0.02
    # x ~ N(v_k, diag(j^-1.2)): pooled within-client variance per feature
    centred = np.concatenate([ds.X[ix] - truth.v[k] for k, ix in enumerate(ds.natural_clients)])
    expected_var = np.arange(1, 61) ** -1.2
    np.testing.assert_allclose(centred.var(axis=0), expected_var, rtol=0.05)
    np.testing.assert_allclose(centred.mean(axis=0), 0.0, atol=0.02)
    # y = argmax softmax(x W_k + b_k)
    for k in (0, 17, 299):
        ix = ds.natural_clients[k]
        logits = ds.X[ix].astype(np.float64) @ truth.W[k] + truth.b[k]
        agree = np.mean(np.argmax(logits, axis=1) == ds.y[ix])
        assert agree > 0.999  # float32 storage of x may flip an exact tie


def test_synthetic_iid_shares_one_model_and_zero_means() -> None:
    ds, truth = make_synthetic(0.0, 0.0, 20, np.random.default_rng(3), iid=True, max_examples=300)
    assert np.all(truth.W[0] == truth.W) and np.all(truth.b == truth.b[0])
    assert np.all(truth.v == 0)
    assert abs(truth.W[0].std() - 1.0) < 0.1
    np.testing.assert_allclose(ds.X.mean(axis=0), 0.0, atol=0.05)


def test_synthetic_alpha_shifts_every_logit_equally() -> None:
    """W_k and b_k share the mean u_k, so u_k adds u_k (sum_j x_j + 1) to every class logit.

    A property of the published recipe: with the same draws, alpha leaves the
    labels unchanged; the heterogeneity across clients comes from the
    per-entry N(0, 1) draws and from beta (the feature means).
    """

    def labels(alpha: float) -> np.ndarray:
        ds, _ = make_synthetic(alpha, 0.5, 30, np.random.default_rng(4), max_examples=200)
        return ds.y

    assert np.array_equal(labels(0.0), labels(3.0))

    def feature_mean_spread(beta: float) -> float:
        ds, truth = make_synthetic(0.0, beta, 200, np.random.default_rng(5), max_examples=60)
        return float(truth.v.mean(axis=1).std())

    assert feature_mean_spread(2.0) > 1.5 > 0.5 > feature_mean_spread(0.0)
