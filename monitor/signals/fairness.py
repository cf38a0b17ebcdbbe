"""Fairness of the global model across clients, from their evaluation accuracy."""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "FAIRNESS_KEYS",
    "gini",
    "jain_index",
    "worst_fraction_mean",
    "rest_fraction_mean",
    "fairness_summary",
    "window_slope",
    "fairness_regression",
    "federation_benefit",
    "worst_fraction_noise_sd",
    "series_noise_sd",
    "change_noise_sd",
]

FAIRNESS_KEYS = (
    "accuracy_mean",
    "accuracy_std",
    "accuracy_min",
    "accuracy_max",
    "accuracy_worst10_mean",
    "accuracy_gap",
    "accuracy_gini",
    "accuracy_jain",
    "accuracy_share_below_floor",
    "accuracy_clients",
)


def _finite(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64).ravel()
    return x[np.isfinite(x)]


def gini(x: np.ndarray) -> float:
    r"""Gini coefficient of non-negative values.

    .. math:: G = \frac{\sum_i \sum_j |x_i - x_j|}{2 n^2 \bar x}
                = \frac{2\sum_i i\,x_{(i)}}{n \sum_i x_i} - \frac{n+1}{n}

    (``x_{(i)}`` sorted ascending, ``i = 1..n``). 0 = everyone equal; NaN for
    no values or a zero mean. O(n log n).
    """
    v = np.sort(_finite(x))
    n = v.size
    if n == 0 or v.sum() <= 0:
        return math.nan
    i = np.arange(1, n + 1)
    return float(2.0 * (i * v).sum() / (n * v.sum()) - (n + 1.0) / n)


def jain_index(x: np.ndarray) -> float:
    r"""Jain's fairness index :math:`J = (\sum x_i)^2 / (n \sum x_i^2)`, in ``[1/n, 1]``.

    1 = everyone equal. NaN for no values or all zeros. Reference: Jain, Chiu &
    Hawe, DEC-TR-301, 1984.
    """
    v = _finite(x)
    s2 = (v**2).sum()
    if v.size == 0 or s2 <= 0:
        return math.nan
    return float(v.sum() ** 2 / (v.size * s2))


def worst_fraction_mean(x: np.ndarray, fraction: float = 0.1) -> float:
    """Mean of the worst ``ceil(fraction * n)`` values (at least one); NaN when empty."""
    v = _finite(x)
    if v.size == 0:
        return math.nan
    k = max(1, math.ceil(fraction * v.size))
    return float(np.partition(v, k - 1)[:k].mean())


def rest_fraction_mean(x: np.ndarray, fraction: float = 0.1) -> float:
    """Mean of the values other than the worst ``ceil(fraction * n)`` (the rest of
    :func:`worst_fraction_mean`); NaN when nothing is left."""
    v = _finite(x)
    k = max(1, math.ceil(fraction * v.size))
    if v.size <= k:
        return math.nan
    return float(np.partition(v, k - 1)[k:].mean())


def fairness_summary(
    accuracy: np.ndarray, floor: float = 0.5, fraction: float = 0.1
) -> dict[str, float]:
    """Fairness aggregates of the clients' evaluation accuracy (finite values only).

    Keys: ``accuracy_mean``, ``accuracy_std`` (population, ddof=0),
    ``accuracy_min``, ``accuracy_max``, ``accuracy_worst10_mean`` (mean of the
    worst ``fraction``), ``accuracy_gap`` (max - min), ``accuracy_gini``,
    ``accuracy_jain``, ``accuracy_share_below_floor`` (share of clients with
    accuracy < ``floor``), ``accuracy_clients`` (count). NaN when no client
    reported an accuracy.
    """
    v = _finite(accuracy)
    if v.size == 0:
        out = dict.fromkeys(FAIRNESS_KEYS, math.nan)
        out["accuracy_clients"] = 0.0
        return out
    return {
        "accuracy_mean": float(v.mean()),
        "accuracy_std": float(v.std()),
        "accuracy_min": float(v.min()),
        "accuracy_max": float(v.max()),
        "accuracy_worst10_mean": worst_fraction_mean(v, fraction),
        "accuracy_gap": float(v.max() - v.min()),
        "accuracy_gini": gini(v),
        "accuracy_jain": jain_index(v),
        "accuracy_share_below_floor": float((v < floor).mean()),
        "accuracy_clients": float(v.size),
    }


def window_slope(y: np.ndarray) -> float:
    """Least-squares slope per round of the finite values of ``y`` (index = round offset); NaN if < 2."""
    y = np.asarray(y, dtype=np.float64)
    t = np.arange(y.size, dtype=np.float64)
    ok = np.isfinite(y)
    if ok.sum() < 2:
        return math.nan
    t, y = t[ok], y[ok]
    tc = t - t.mean()
    return float((tc * (y - y.mean())).sum() / (tc**2).sum())


def fairness_regression(mean_history: np.ndarray, worst_history: np.ndarray) -> tuple[float, float]:
    r"""Change of a reference accuracy series and of the worst-decile accuracy over a window.

    Each is the least-squares slope times ``(window - 1)``: the fitted change
    from the first to the last round of the window, less noisy than
    last-minus-first. The reference is the mean of the clients, or (as the
    detector uses it) of the clients outside the worst decile
    (:func:`rest_fraction_mean`): a fairness regression is the others holding or
    improving while ``worst_change < -threshold``.

    Returns ``(reference_change, worst_change)``; NaN with fewer than two rounds.
    """
    w = len(mean_history)
    return window_slope(mean_history) * (w - 1), window_slope(worst_history) * (w - 1)


def federation_benefit(eval_accuracy: np.ndarray, local_accuracy: np.ndarray) -> np.ndarray:
    """Per client ``eval_accuracy - local_accuracy``: what federating gained over training alone (NaN where either is missing)."""
    return np.asarray(eval_accuracy, dtype=np.float64) - np.asarray(
        local_accuracy, dtype=np.float64
    )


def worst_fraction_noise_sd(
    accuracy: np.ndarray, eval_examples: np.ndarray, fraction: float = 0.1
) -> float:
    r"""Sampling noise (sd) of the worst-fraction mean accuracy from the clients' evaluation-set sizes.

    A client's accuracy on ``n_i`` held-out examples is a binomial proportion: its sd
    is ``sqrt(p_i (1 - p_i) / n_i)``. Over the ``k = ceil(fraction * K)`` worst clients

    .. math:: \sigma_W = \frac{1}{k} \sqrt{\sum_{i \in W} \frac{\tilde p_i (1 - \tilde p_i)}{n_i}},
              \qquad \tilde p_i = \frac{p_i n_i + 1}{n_i + 2}

    (the Laplace-smoothed proportion, so a client at 0% or 100% still has noise).
    Clients without a positive ``n_i`` are left out of the sum but still count in
    ``k``'s ranking; NaN when none of the worst has one.
    """
    a = np.asarray(accuracy, dtype=np.float64)
    n = np.asarray(eval_examples, dtype=np.float64)
    ok = np.isfinite(a)
    if not ok.any():
        return math.nan
    a, n = a[ok], n[ok]
    k = max(1, math.ceil(fraction * a.size))
    worst = np.argsort(a, kind="stable")[:k]
    aw, nw = a[worst], n[worst]
    have = np.isfinite(nw) & (nw > 0)
    if not have.any():
        return math.nan
    p = (aw[have] * nw[have] + 1.0) / (nw[have] + 2.0)
    return float(math.sqrt((p * (1.0 - p) / nw[have]).sum()) / k)


def series_noise_sd(y: np.ndarray) -> float:
    r"""Round-to-round noise (sd) of a series, robust to its trend: ``1.4826 MAD(diff y) / sqrt 2``.

    For ``y_t = m_t + e_t`` with a slowly moving ``m`` and independent ``e_t`` of sd
    ``sigma``, ``y_t - y_{t-1}`` has sd ``sqrt(2) sigma``; the MAD ignores the rounds
    where something really changed. NaN with fewer than 4 finite values.
    """
    v = np.asarray(y, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size < 4:
        return math.nan
    d = np.diff(v)
    return float(1.482602218505602 * np.median(np.abs(d - np.median(d))) / math.sqrt(2.0))


def change_noise_sd(sigma: float, window: int) -> float:
    r"""Sd of :func:`fairness_regression`'s fitted change when each round carries noise of sd ``sigma``.

    The change is the least-squares slope times ``w - 1``; with independent noise,
    ``Var(slope) = sigma^2 / sum_t (t - t_bar)^2``, so

    .. math:: \operatorname{sd} = \frac{(w - 1)\,\sigma}{\sqrt{\sum_t (t - \bar t)^2}}
              = (w - 1)\,\sigma \sqrt{\frac{12}{w (w^2 - 1)}}

    (1.26 sigma for w = 5). NaN for ``w < 2`` or a NaN ``sigma``.
    """
    if window < 2 or not math.isfinite(sigma):
        return math.nan
    return float((window - 1) * sigma * math.sqrt(12.0 / (window * (window**2 - 1))))
