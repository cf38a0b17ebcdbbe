"""Page-Hinkley change-point detection, vectorised over clients.

One detector per client; the state is four ``(n,)`` arrays carried between
rounds (:class:`PageHinkleyState`). Observations may be NaN ("not reported
this round"): those clients' state is left untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "PageHinkleyState",
    "page_hinkley_update",
    "page_hinkley_reset",
    "own_loss_rise",
    "relative_log_loss",
]


@dataclass
class PageHinkleyState:
    """Per-client Page-Hinkley accumulators.

    ``n``: observations since the last reset; ``mean``: their running mean;
    ``cum``: the cumulative deviation ``m_t``; ``cum_min``: ``min_{s<=t} m_s``
    (``+inf`` before the first observation).
    """

    n: np.ndarray
    mean: np.ndarray
    cum: np.ndarray
    cum_min: np.ndarray

    @classmethod
    def empty(cls, size: int) -> PageHinkleyState:
        return cls(
            n=np.zeros(size, dtype=np.int64),
            mean=np.zeros(size),
            cum=np.zeros(size),
            cum_min=np.full(size, np.inf),
        )


def page_hinkley_update(
    state: PageHinkleyState,
    x: np.ndarray,
    delta: float = 0.1,
    threshold: float = 1.5,
    min_instances: int = 5,
    alpha: float = 1.0,
    reset_on_alarm: bool = True,
) -> tuple[PageHinkleyState, np.ndarray, np.ndarray]:
    r"""One Page-Hinkley step for every client (detects an *increase* in the mean).

    For each client with a finite observation ``x_t``:

    .. math::
        \bar x_t = \bar x_{t-1} + (x_t - \bar x_{t-1})/t,\qquad
        m_t = \alpha\, m_{t-1} + (x_t - \bar x_t - \delta),\qquad
        PH_t = m_t - \min_{s \le t} m_s

    and an alarm is raised when ``t >= min_instances`` and ``PH_t > threshold``;
    the client's accumulators then restart (as in river's ``PageHinkley``).

    Parameters
    ----------
    state : PageHinkleyState
        Arrays of shape ``(n,)``; not modified (a new state is returned).
    x : ndarray, shape (n,)
        This round's observation per client; NaN = no observation.
    delta : float
        Magnitude of change tolerated per observation.
    threshold : float
        Alarm level ``lambda`` for ``PH_t``.
    min_instances : int
        Observations needed before an alarm may be raised.
    alpha : float
        Forgetting factor of the cumulative sum (1 = none).
    reset_on_alarm : bool
        Restart a client's accumulators after its alarm.

    Returns
    -------
    (new_state, statistic, alarm)
        ``statistic`` is ``PH_t`` before any reset (NaN where ``x`` is NaN);
        ``alarm`` a bool array.

    References
    ----------
    E. S. Page, "Continuous inspection schemes", Biometrika 41, 1954;
    D. V. Hinkley, "Inference about the change-point from cumulative sum tests",
    Biometrika 58, 1971; river.drift.PageHinkley.
    """
    x = np.asarray(x, dtype=np.float64)
    obs = np.isfinite(x)
    xs = np.where(obs, x, 0.0)
    n = state.n + obs
    mean = np.where(obs, state.mean + (xs - state.mean) / np.maximum(n, 1), state.mean)
    cum = np.where(obs, alpha * state.cum + (xs - mean - delta), state.cum)
    cum_min = np.where(obs, np.minimum(state.cum_min, cum), state.cum_min)
    stat = np.where(obs, cum - cum_min, np.nan)
    alarm = obs & (n >= min_instances) & (stat > threshold)
    if reset_on_alarm and alarm.any():
        n = np.where(alarm, 0, n)
        mean = np.where(alarm, 0.0, mean)
        cum = np.where(alarm, 0.0, cum)
        cum_min = np.where(alarm, np.inf, cum_min)
    return PageHinkleyState(n=n, mean=mean, cum=cum, cum_min=cum_min), stat, alarm


def page_hinkley_reset(state: PageHinkleyState, mask: np.ndarray) -> PageHinkleyState:
    """Restart the accumulators of the clients in ``mask`` (what an alarm does when ``reset_on_alarm``)."""
    return PageHinkleyState(
        n=np.where(mask, 0, state.n),
        mean=np.where(mask, 0.0, state.mean),
        cum=np.where(mask, 0.0, state.cum),
        cum_min=np.where(mask, np.inf, state.cum_min),
    )


def own_loss_rise(
    log_loss: np.ndarray, ewma: np.ndarray, best: np.ndarray, weight: float = 0.5
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""How far each client's own log loss is above the best level it has held.

    The client's smoothed log loss ``e_t = (1 - w) e_{t-1} + w x_t`` (``e_1 = x_1``)
    and its best level ``b_t = min_{s<t} e_s``; the rise is ``x_t - b_{t-1}``
    (NaN before a best level exists). NaN observations leave both unchanged.

    Returns ``(rise, new_ewma, new_best)``.
    """
    x = np.asarray(log_loss, dtype=np.float64)
    obs = np.isfinite(x)
    rise = np.where(obs & np.isfinite(best), x - best, np.nan)
    started = np.isfinite(ewma)
    new_ewma = np.where(obs, np.where(started, (1.0 - weight) * ewma + weight * x, x), ewma)
    new_best = np.where(obs, np.fmin(best, new_ewma), best)
    return rise, new_ewma, new_best


def relative_log_loss(
    loss: np.ndarray, mask: np.ndarray | None = None, floor: float = 1e-6
) -> np.ndarray:
    r"""Each client's log loss relative to the round's median client.

    .. math:: r_i = \ln\max(\ell_i, \text{floor}) - \operatorname{median}_j \ln\max(\ell_j, \text{floor})

    The global model's loss falls on every client as training proceeds (and
    jumps on every client when the aggregate breaks); subtracting the round
    median removes that common movement, so a change point in ``r_i`` is about
    client ``i``. The log makes the detector scale-free (``r`` rising by 0.7 is
    the loss doubling relative to the federation). Non-finite or masked-out
    losses give NaN and do not enter the median.
    """
    loss = np.asarray(loss, dtype=np.float64)
    ok = np.isfinite(loss)
    if mask is not None:
        ok &= mask
    out = np.full(loss.shape, np.nan)
    if not ok.any():
        return out
    lg = np.log(np.maximum(loss[ok], floor))
    out[ok] = lg - np.median(lg)
    return out
