"""Update divergence from update norms and sketches, vectorised over clients.

A sketch is a fixed-seed random projection of a client's flattened model
delta; inner products, hence cosines and norm ratios, survive it (Johnson-
Lindenstrauss), the weights do not.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "MAD_TO_SD",
    "MEAN_AD_TO_SD",
    "cosine_to",
    "rowwise_cosine",
    "norm_ratio_to_median",
    "divergence_score",
    "robust_z",
    "stale_updates",
    "free_riders",
    "nonfinite_rows",
    "update_streak",
    "leave_one_out_cosine",
    "cusum_low",
    "identical_updates",
    "partial_reference",
    "fisher_z",
    "theil_sen_line",
    "place_residual",
]

MAD_TO_SD = 1.482602218505602
"""1 / Phi^{-1}(3/4): makes the MAD a consistent estimator of a normal sd."""
MEAN_AD_TO_SD = 1.2533141373155001
"""sqrt(pi/2): makes the mean absolute deviation a consistent estimator of a normal sd."""


def cosine_to(sketch: np.ndarray, target: np.ndarray) -> np.ndarray:
    r"""Cosine similarity of every row of ``sketch`` to one vector ``target``.

    .. math:: \cos_i = \frac{s_i \cdot t}{\|s_i\| \|t\|}

    Parameters
    ----------
    sketch : ndarray, shape (n, D)
    target : ndarray, shape (D,)

    Returns ``(n,)``: NaN where a row or the target is zero, missing or not finite.
    Same as ``1 - scipy.spatial.distance.cosine(s_i, t)``.
    """
    s = np.asarray(sketch, dtype=np.float64)
    t = np.asarray(target, dtype=np.float64)
    return rowwise_cosine(s, np.broadcast_to(t, s.shape))


def rowwise_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of ``a[i]`` and ``b[i]`` for every row; NaN where undefined."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    dot = np.einsum("ij,ij->i", a, b)
    na = np.sqrt(np.einsum("ij,ij->i", a, a))
    nb = np.sqrt(np.einsum("ij,ij->i", b, b))
    den = na * nb
    good = np.isfinite(dot) & np.isfinite(den) & (den > 0)
    out = np.full(a.shape[0], np.nan)
    np.divide(dot, den, out=out, where=good)
    return np.clip(out, -1.0, 1.0)


def norm_ratio_to_median(norms: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    r"""Each client's update norm divided by the round's median norm.

    .. math:: r_i = \|u_i\| / \operatorname{median}_j \|u_j\|

    The median is over finite norms (and ``mask``). NaN where the norm is
    missing or not finite, or the median is zero.
    """
    x = np.asarray(norms, dtype=np.float64)
    ok = np.isfinite(x)
    if mask is not None:
        ok &= mask
    out = np.full(x.shape, np.nan)
    if not ok.any():
        return out
    med = np.median(x[ok])
    if med > 0:
        np.divide(x, med, out=out, where=np.isfinite(x))
    return out


def robust_z(x: np.ndarray, mask: np.ndarray | None = None, min_count: int = 5) -> np.ndarray:
    r"""Robust z-score of each value within its round.

    .. math:: z_i = \frac{x_i - \operatorname{median}(x)}{1.4826\,\operatorname{MAD}(x)}

    The median and MAD are over finite values (and ``mask``). When the MAD is
    0 (more than half the values tie) the scale falls back to
    ``1.2533 * mean |x - median|``; when that is 0 too, ``z`` is 0 at the
    median and ``+-inf`` elsewhere. Fewer than ``min_count`` values: all NaN
    (a median of four clients says little).

    Reference: Iglewicz & Hoaglin, "How to Detect and Handle Outliers", 1993
    (modified z-score, outliers at ``|z| > 3.5``).
    """
    x = np.asarray(x, dtype=np.float64)
    ok = np.isfinite(x)
    if mask is not None:
        ok &= mask
    out = np.full(x.shape, np.nan)
    if ok.sum() < min_count:
        return out
    v = x[ok]
    med = np.median(v)
    dev = np.abs(v - med)
    scale = MAD_TO_SD * np.median(dev)
    if scale <= 0:
        scale = MEAN_AD_TO_SD * dev.mean()
    fin = np.isfinite(x)
    d = x - med
    if scale > 0:
        out[fin] = d[fin] / scale
    else:
        out[fin] = np.where(d[fin] == 0, 0.0, np.copysign(np.inf, d[fin]))
    return out


def stale_updates(
    cos_prev: np.ndarray,
    norm: np.ndarray,
    prev_norm: np.ndarray,
    cosine_min: float = 0.999999,
    norm_rtol: float = 1e-6,
) -> np.ndarray:
    r"""Updates that repeat the client's previous one.

    Stale when ``cos(s_t, s_{t-1}) >= cosine_min`` and
    ``|\|u_t\| / \|u_{t-1}\| - 1| <= norm_rtol``. Where no sketch exists
    (``cos_prev`` NaN) the norm alone must match to ``1e-9`` relative: an
    identical float norm is itself strong evidence of a resent update.
    Zero norms are never stale (they are free-riders).
    """
    norm = np.asarray(norm, dtype=np.float64)
    prev = np.asarray(prev_norm, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.abs(norm / prev - 1.0)
    pos = np.isfinite(rel) & (norm > 0) & (prev > 0)
    by_sketch = np.isfinite(cos_prev) & (np.nan_to_num(cos_prev, nan=-2.0) >= cosine_min)
    by_sketch &= pos & (rel <= norm_rtol)
    by_norm = ~np.isfinite(cos_prev) & pos & (rel <= 1e-9)
    return by_sketch | by_norm


def free_riders(norm_ratio: np.ndarray, norm: np.ndarray, ratio_max: float = 0.01) -> np.ndarray:
    """Near-zero updates: ``norm == 0`` or norm ratio to the round median ``<= ratio_max``."""
    norm = np.asarray(norm, dtype=np.float64)
    r = np.nan_to_num(np.asarray(norm_ratio, dtype=np.float64), nan=np.inf)
    return (norm == 0) | (r <= ratio_max)


def nonfinite_rows(x: np.ndarray) -> np.ndarray:
    """True for rows holding any NaN/inf but not entirely NaN (an all-NaN row is "not reported")."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        return np.isinf(x)
    missing = np.isnan(x).all(axis=-1)
    return ~np.isfinite(x).all(axis=-1) & ~missing


def update_streak(streak: np.ndarray, flagged: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """Consecutive-round counters: +1 where flagged, 0 where observed and not flagged, kept otherwise."""
    return np.where(flagged, streak + 1, np.where(observed, 0, streak))


def divergence_score(
    z_norm: np.ndarray,
    norm_ratio: np.ndarray,
    z_cos: np.ndarray,
    cos: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    z_cap: float,
    norm_min_ratio: float = 3.0,
    cosine_min_drop: float = 0.5,
    norm_material: np.ndarray | None = None,
) -> np.ndarray:
    r"""How far an update is out of line: robust z where the effect is material, capped where not.

    .. math::

        s_i = \max\bigl(a_i, b_i\bigr),\quad
        a_i = \begin{cases} |z^{norm}_i| & \max(\rho_i, 1/\rho_i) \ge R \\
                             \min(|z^{norm}_i|, c) & \text{otherwise} \end{cases},\quad
        b_i = \begin{cases} -z^{cos}_i & \tilde{c} - \cos_i \ge D \\
                             \min(-z^{cos}_i, c) & \text{otherwise} \end{cases}

    with :math:`\rho_i` the norm ratio to the round median, :math:`\tilde{c}`
    the median cosine over ``mask``, ``c = z_cap`` (the alarm line: a capped
    side can reach it but never exceed it), ``R = norm_min_ratio``,
    ``D = cosine_min_drop``. NaN where both sides are NaN. ``norm_material``
    (bool per client), when given, replaces the test :math:`\max(\rho_i, 1/\rho_i) \ge R`
    (the update-anomalies detector passes the client's own-reference test of
    :func:`monitor.signals.norm_reference.self_referenced_norm`).
    """
    z_norm = np.asarray(z_norm, dtype=np.float64)
    rho = np.asarray(norm_ratio, dtype=np.float64)
    z_cos = np.asarray(z_cos, dtype=np.float64)
    cos = np.asarray(cos, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        off = np.fmax(rho, 1.0 / rho)
    a = np.abs(z_norm)
    far = np.nan_to_num(off, nan=0.0) >= norm_min_ratio
    if norm_material is not None:
        far = np.asarray(norm_material, dtype=bool)
    a = np.where(far, a, np.minimum(a, z_cap))
    m = np.isfinite(cos) if mask is None else (np.asarray(mask, dtype=bool) & np.isfinite(cos))
    med = float(np.median(cos[m])) if m.any() else np.nan
    b = -z_cos
    drop = med - cos
    b = np.where(np.nan_to_num(drop, nan=-np.inf) >= cosine_min_drop, b, np.minimum(b, z_cap))
    return np.fmax(a, b)


def leave_one_out_cosine(
    sketch: np.ndarray,
    weights: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    contributes: np.ndarray | None = None,
) -> np.ndarray:
    r"""Cosine of each client's sketch to the weighted mean of the *other* clients' sketches.

    .. math::

        A_{-i} = \frac{\sum_{j \ne i,\, j \in C} w_j s_j}{\sum_{j \ne i,\, j \in C} w_j}, \qquad
        c_i = \cos(s_i, A_{-i})

    over the rows in ``mask`` with finite sketches (weights: ``num_examples``, 1 where
    missing or not positive); :math:`C` is the rows of ``mask`` that also are in
    ``contributes`` (all of them when it is None). The reference leaves the client out: in a non-IID
    federation the updates are nearly orthogonal, so a client's own share of the
    aggregate lifts its cosine to it (by about ``w_i ||s_i|| / (W ||A||)``), and a
    crafted update drags the aggregate toward itself. ``contributes`` leaves out the
    clients already under suspicion too, so that their updates do not drag the
    reference the honest clients are judged against. NaN outside ``mask``, with
    fewer than two usable rows, or where no other row contributes.
    """
    s = np.asarray(sketch, dtype=np.float64)
    n = s.shape[0]
    out = np.full(n, np.nan)
    if s.ndim != 2 or s.shape[1] == 0:
        return out
    use = np.isfinite(s).all(axis=1)
    if mask is not None:
        use &= np.asarray(mask, dtype=bool)
    if use.sum() < 2:
        return out
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64).copy()
    w = np.where(np.isfinite(w) & (w > 0), w, 1.0)
    con = use if contributes is None else use & np.asarray(contributes, dtype=bool)
    total = (w[con, None] * s[con]).sum(axis=0)
    own = np.where(con, w, 0.0)[use]
    su = s[use]
    den = w[con].sum() - own
    with np.errstate(invalid="ignore", divide="ignore"):
        others = (total[None, :] - own[:, None] * su) / den[:, None]
    cos = rowwise_cosine(su, others)
    out[use] = np.where(den > 0, cos, np.nan)
    return out


def cusum_low(
    evidence: np.ndarray, z: np.ndarray, allowance: float, observed: np.ndarray | None = None
) -> np.ndarray:
    r"""One-sided (lower) CUSUM of robust z-scores, per client: evidence that accumulates.

    .. math:: S_t = \max\bigl(0,\ S_{t-1} - z_t - k\bigr)

    (Page, "Continuous inspection schemes", Biometrika 1954; Montgomery, *Introduction
    to Statistical Quality Control*, ch. 9). ``k = allowance``: rounds with
    ``z > -k`` drain the evidence, so a healthy client whose cosine sits a little low
    every round (its own data) does not build up, while one that sits far below the
    round's spread round after round does, even when no single round is beyond a
    per-round threshold. Where ``z`` is NaN or ``observed`` is False the evidence is kept.
    """
    e = np.asarray(evidence, dtype=np.float64)
    z = np.asarray(z, dtype=np.float64)
    seen = np.isfinite(z)
    if observed is not None:
        seen &= np.asarray(observed, dtype=bool)
    step = np.maximum(0.0, e - np.nan_to_num(z, nan=0.0, posinf=0.0, neginf=-1e6) - allowance)
    return np.where(seen, np.minimum(step, 1e6), e)


def identical_updates(
    sketch: np.ndarray,
    norm: np.ndarray,
    mask: np.ndarray | None = None,
    cosine_min: float = 0.999999,
    norm_rtol: float = 1e-6,
) -> np.ndarray:
    r"""For each client, how many *other* clients sent the same update this round.

    Same = sketch cosine ``>= cosine_min`` and ``| ||u_i|| / ||u_j|| - 1 | <= norm_rtol``
    (the stale-update test, across clients instead of across rounds). Honest clients
    train on different data and never send the same vector; colluding attackers that
    craft one update from the honest ones (ALIE, IPM: :mod:`simulator.faults`) all send
    it. Attackers who add a little noise each evade this test; the cosine evidence
    (:func:`cusum_low`) remains. ``O(n^2 D)`` with one matrix product.
    """
    s = np.asarray(sketch, dtype=np.float64)
    nm = np.asarray(norm, dtype=np.float64)
    n = s.shape[0]
    out = np.zeros(n, dtype=np.int64)
    if s.ndim != 2 or s.shape[1] == 0 or n < 2:
        return out
    use = np.isfinite(s).all(axis=1) & np.isfinite(nm) & (nm > 0)
    if mask is not None:
        use &= np.asarray(mask, dtype=bool)
    rows = np.flatnonzero(use)
    if rows.size < 2:
        return out
    su = s[rows]
    lens = np.linalg.norm(su, axis=1)
    good = lens > 0
    unit = np.where(good[:, None], su / np.where(good, lens, 1.0)[:, None], 0.0)
    cos = unit @ unit.T
    nr = nm[rows]
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.abs(nr[:, None] / nr[None, :] - 1.0)
    same = (cos >= cosine_min) & (rel <= norm_rtol) & good[:, None] & good[None, :]
    np.fill_diagonal(same, False)
    out[rows] = same.sum(axis=1)
    return out


def partial_reference(
    total: np.ndarray, count: np.ndarray, value: np.ndarray, have: np.ndarray, min_count: int = 5
) -> np.ndarray:
    r"""Each client's reference from what it has: its own mean, else the round's median.

    .. math:: r_i = \begin{cases} T_i / n_i & n_i \ge 1 \\
                                  \operatorname{median}_{j \in have} v_j & n_i = 0 \end{cases}

    ``total``/``count``: per-client sums and counts of the client's earlier values;
    ``value``: this round's, of which ``have`` are usable for the median (NaN with fewer
    than ``min_count``). Under partial participation a client sampled in 0.3 of the
    rounds has two or three usable rounds before a fault at round 8-15; a test that
    waits for a full reference misses what the first faulty round shows.
    """
    v = np.asarray(value, dtype=np.float64)
    have = np.asarray(have, dtype=bool) & np.isfinite(v)
    median = float(np.median(v[have])) if have.sum() >= min_count else np.nan
    n = np.asarray(count, dtype=np.float64)
    return np.where(n >= 1, np.asarray(total, dtype=np.float64) / np.maximum(n, 1), median)


def fisher_z(cosine: np.ndarray, clip: float = 0.995) -> np.ndarray:
    r"""Fisher's z of a cosine: :math:`\operatorname{artanh}(c)`, ``c`` clipped to ``+-clip``.

    Fisher's variance-stabilising transform of a correlation (Fisher, "On the 'probable
    error' of a coefficient of correlation", Metron 1921). A cosine between an update and
    the others' mean is such a correlation: where a shared direction shrinks as training
    converges, a client near 0.9 and one near 0.5 lose very different amounts of cosine
    but about the same amount of z. NaN stays NaN.
    """
    c = np.asarray(cosine, dtype=np.float64)
    return np.arctanh(np.clip(c, -clip, clip))


def theil_sen_line(x: np.ndarray, y: np.ndarray, max_pairs: int = 1_000_000) -> tuple[float, float]:
    r"""Theil-Sen line through ``(x, y)``: slope = median pairwise slope, intercept = median residual.

    .. math:: b = \operatorname{median}_{i<j,\ x_i \ne x_j} \frac{y_j - y_i}{x_j - x_i},
              \quad a = \operatorname{median}_i (y_i - b x_i)

    (Theil 1950, Sen 1968; ``scipy.stats.theilslopes``.) Robust to up to ~29% of the
    points lying anywhere. Finite values only; fewer than 2 distinct ``x``: slope 0. Over
    ``max_pairs`` pairs a fixed-seed sample of that many pairs is used (the median of a
    sample of a million slopes is within noise of the full one).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    n = len(x)
    if n == 0:
        return 0.0, float("nan")
    if n * (n - 1) // 2 <= max_pairs:
        i, j = np.triu_indices(n, 1)
    else:
        rng = np.random.default_rng(0)
        i, j = rng.integers(0, n, max_pairs), rng.integers(0, n, max_pairs)
    dx = x[j] - x[i]
    use = dx != 0
    slope = float(np.median((y[j] - y[i])[use] / dx[use])) if use.any() else 0.0
    return slope, float(np.median(y - slope * x))


def place_residual(
    drop: np.ndarray, place: np.ndarray, mask: np.ndarray, min_count: int = 5
) -> np.ndarray:
    r"""Each client's drop less the drop of clients whose reference place was like its own.

    .. math:: r_i = d_i - (a + b\,p_i)

    with :math:`(b, a)` the :func:`theil_sen_line` of the drops ``d`` on the reference
    places ``p`` over ``mask`` (NaN outside it, and everywhere with fewer than
    ``min_count``). As a federation trains, clients move together by their place: under
    label skew those that agreed most with the early majority direction fall back
    towards the others, under IID the noisiest fall furthest; a drop judged against the
    round's median calls such a group divergent, one judged against the line does not.
    """
    d = np.asarray(drop, dtype=np.float64)
    p = np.asarray(place, dtype=np.float64)
    ok = np.asarray(mask, dtype=bool) & np.isfinite(d) & np.isfinite(p)
    out = np.full(d.shape, np.nan)
    if ok.sum() < min_count:
        return out
    slope, intercept = theil_sen_line(p[ok], d[ok])
    out[ok] = d[ok] - (intercept + slope * p[ok])
    return out
