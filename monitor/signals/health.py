"""Global health of the federated model, from its per-round global evaluation."""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "stagnation",
    "converged",
    "loss_jump_ratio",
    "nonfinite_aggregate",
    "centralized_gap",
]


def stagnation(loss_history: np.ndarray, window: int = 10) -> float:
    r"""Relative improvement of the best global loss over the last ``window`` rounds.

    .. math::
        I = \frac{\min(\ell_{1..t-w}) - \min(\ell_{t-w+1..t})}{|\min(\ell_{1..t-w})|}

    Positive = still improving. NaN until there are more than ``window`` finite
    losses. A run is stagnating when ``I`` is below a small threshold.
    """
    y = np.asarray(loss_history, dtype=np.float64)
    y = y[np.isfinite(y)]
    if y.size <= window:
        return math.nan
    before = y[:-window].min()
    recent = y[-window:].min()
    if before == 0:
        return 0.0 if recent >= 0 else math.inf
    return float((before - recent) / abs(before))


def converged(
    loss_history: np.ndarray,
    norm_history: np.ndarray,
    window: int = 10,
    *,
    min_loss_gain: float = 0.2,
    max_norm_ratio: float = 0.5,
) -> bool:
    r"""Whether a run whose loss went flat has *converged* rather than got *stuck*.

    Converged: the model learned (its best loss is at least ``min_loss_gain`` below
    the first round's, relatively) and its updates are settling (the median
    aggregate update norm of the last ``window`` rounds is at most
    ``max_norm_ratio`` x that of the first ``window`` rounds). A stuck run has flat
    loss *without* having learned, or keeps taking steps as large as at the start
    while the loss no longer moves (oscillation, a learning rate too large, a
    broken aggregate). ``False`` when either history is too short to tell.
    """
    y = np.asarray(loss_history, dtype=np.float64)
    y = y[np.isfinite(y)]
    u = np.asarray(norm_history, dtype=np.float64)
    u = u[np.isfinite(u)]
    if y.size < 2 or u.size < 2 * window or y[0] <= 0:
        return False
    learned = (y[0] - y.min()) / y[0] >= min_loss_gain
    early, recent = float(np.median(u[:window])), float(np.median(u[-window:]))
    settling = early > 0 and recent <= max_norm_ratio * early
    return bool(learned and settling)


def loss_jump_ratio(loss: float, loss_history: np.ndarray, lookback: int = 5) -> float:
    """This round's global loss divided by the median of the previous ``lookback`` finite losses.

    ``+inf`` for a non-finite loss; NaN without history or when the median is 0.
    """
    if loss is None or (isinstance(loss, float) and math.isnan(loss)):
        return math.nan
    if not math.isfinite(loss):
        return math.inf
    y = np.asarray(loss_history, dtype=np.float64)
    y = y[np.isfinite(y)][-lookback:]
    if y.size == 0:
        return math.nan
    med = float(np.median(y))
    return loss / med if med > 0 else math.nan


def nonfinite_aggregate(
    global_eval_loss: float | None,
    aggregate_update_norm: float | None,
    aggregate_sketch: np.ndarray | None,
) -> bool:
    """True when the round's global loss, aggregate norm or aggregate sketch holds NaN or inf.

    A value that is ``None`` (not reported) is not evidence.
    """
    for v in (global_eval_loss, aggregate_update_norm):
        if v is not None and not math.isfinite(v):
            return True
    return aggregate_sketch is not None and not bool(np.isfinite(aggregate_sketch).all())


def centralized_gap(centralized_accuracy: float | None, global_accuracy: float | None) -> float:
    """``centralized_accuracy - global_accuracy``: what federation still costs; NaN if either is missing."""
    if centralized_accuracy is None or global_accuracy is None:
        return math.nan
    return float(centralized_accuracy - global_accuracy)
