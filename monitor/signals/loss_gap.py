r"""The gap between a client's training loss and its held-out loss, and how it moves.

A client trains on its own training split and reports the mean loss of that
training (``train_loss``); the global model is evaluated on its held-out split
(``eval_loss``). Both splits come from the same local data, so their log ratio

.. math:: g_{i,t} = \ln\bigl(\text{train\_loss}_{i,t} / \text{eval\_loss}_{i,t}\bigr)

is a property of the client (its data, how far it over-fits in its local
epochs) that changes slowly. Corrupted *training* labels (flipped or noisy)
raise the training loss, which is measured against those labels, while the
held-out loss, measured against clean labels, stays: :math:`g` jumps. A
covariate shift or a label-mix drift moves both splits and leaves :math:`g`
near its usual; a change of the global model moves every client's :math:`g`
together and cancels against the round's median.

The move of a client is judged against its own usual (a reference of
:math:`g`, :func:`monitor.signals.norm_reference.update_reference`) and the
round's median move (:func:`centred_move`), accumulated over rounds with an
upper CUSUM (:func:`cusum_high`). Which side moved is told by the same move of
the client's training loss against the round's median client
(:func:`monitor.signals.changepoint.relative_log_loss`): label noise moves the training loss; a held-out loss
that fell (a new global model that fits this client better) does not.
"""

from __future__ import annotations

import numpy as np

from monitor.signals.divergence import cusum_low

__all__ = ["log_loss_gap", "centred_move", "cusum_high"]

MIN_CLIENTS = 5
"""A round's median move of fewer than this many clients says too little (NaN moves)."""


def log_loss_gap(train_loss: np.ndarray, eval_loss: np.ndarray, usable: np.ndarray) -> np.ndarray:
    r""":math:`\ln(\text{train\_loss} / \text{eval\_loss})`, NaN where not ``usable`` or either loss is not finite and > 0."""
    tl = np.asarray(train_loss, dtype=np.float64)
    el = np.asarray(eval_loss, dtype=np.float64)
    ok = np.asarray(usable, dtype=bool) & np.isfinite(tl) & np.isfinite(el) & (tl > 0) & (el > 0)
    out = np.full(tl.shape, np.nan)
    out[ok] = np.log(tl[ok]) - np.log(el[ok])
    return out


def centred_move(
    value: np.ndarray, ref: np.ndarray, has_ref: np.ndarray, min_clients: int = MIN_CLIENTS
) -> np.ndarray:
    r"""The move from the client's own reference, less the round's median move.

    .. math:: d_i = (x_i - \bar x_i) - \operatorname{median}_j (x_j - \bar x_j)

    over the clients with a finite ``value`` and a reference (``has_ref``).
    Fewer than ``min_clients`` such clients: all NaN (the median of a handful
    of moves cannot tell a common move from one client's).
    """
    x = np.asarray(value, dtype=np.float64)
    has = np.asarray(has_ref, dtype=bool) & np.isfinite(x)
    out = np.full(x.shape, np.nan)
    if has.sum() < min_clients:
        return out
    raw = x[has] - np.asarray(ref, dtype=np.float64)[has]
    out[has] = raw - np.median(raw)
    return out


def cusum_high(evidence: np.ndarray, x: np.ndarray, allowance: float, cap: float) -> np.ndarray:
    r"""One-sided (upper) CUSUM per client: :math:`S_t = \min\bigl(c, \max(0, S_{t-1} + x_t - k)\bigr)`.

    (Page, "Continuous inspection schemes", Biometrika 1954.) ``k = allowance``:
    a round with :math:`x < k` drains the evidence, so honest jitter around the
    client's usual never builds up, while one clear move (:math:`x \ge k + h`)
    crosses an alarm level ``h`` at once and two moderate ones in a row do too.
    ``c = cap`` bounds the evidence so that a client whose gap comes back is
    cleared within :math:`c / k` rounds. Where ``x`` is NaN the evidence is kept
    (the client was not judged this round).
    """
    # the lower CUSUM of the negated move is this recursion; only the cap is this one's
    return np.minimum(cusum_low(evidence, -np.asarray(x, dtype=np.float64), allowance), cap)
