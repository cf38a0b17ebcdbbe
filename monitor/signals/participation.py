"""Participation: who reported, who keeps dropping out, who is slow."""

from __future__ import annotations

import math

import numpy as np

from monitor.signals.divergence import robust_z
from monitor.signals.norm_reference import update_reference

__all__ = [
    "STATUSES",
    "status_counts",
    "participation_ratio",
    "dropout_streaks",
    "straggler_z",
    "wall_time_ratio",
    "own_time_ratio",
    "own_time_reference",
    "straggler_evidence",
    "sampling_rate",
    "absence_p_value",
]

STATUSES = ("ok", "failed", "dropped", "timeout")


def status_counts(status: np.ndarray) -> dict[str, int]:
    """Number of reports per status (``ok``, ``failed``, ``dropped``, ``timeout``)."""
    s = np.asarray(status, dtype=object)
    return {k: int((s == k).sum()) for k in STATUSES}


def participation_ratio(reported_ok: int, expected: int | None) -> float:
    """``reported_ok / expected``; NaN when nothing was expected."""
    if not expected:
        return math.nan
    return reported_ok / expected


def dropout_streaks(streak: np.ndarray, failed: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Consecutive rounds a client failed, dropped out, timed out or (when expected) went missing.

    ``failed`` marks this round's non-ok clients (including expected clients
    that sent nothing); ``ok`` the clients that reported successfully. Others
    keep their streak (a client not sampled this round is not a dropout).
    """
    return np.where(failed, streak + 1, np.where(ok, 0, streak))


def straggler_z(wall_time_seconds: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    r"""Robust z-score of ``ln(wall time)`` within the round.

    Wall times are right-skewed; on the log scale a client taking 3x the
    median is as far out as one taking a third. See
    :func:`monitor.signals.divergence.robust_z`.
    """
    t = np.asarray(wall_time_seconds, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        lt = np.log(np.where(t > 0, t, np.nan))
    return robust_z(lt, mask)


def wall_time_ratio(wall_time_seconds: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    r"""``t_i / median_j t_j`` over the masked clients with a positive, finite wall time.

    The robust z alone says "unusual for this round"; when every client takes
    about the same time the MAD is tiny and 0.11 s vs 0.10 s can be far out.
    A straggler must also be materially slower: the detector asks for both.
    NaN where ``t_i`` is missing or no client has a usable time.
    """
    t = np.asarray(wall_time_seconds, dtype=np.float64)
    m = np.isfinite(t) & (t > 0)
    if mask is not None:
        m &= np.asarray(mask, dtype=bool)
    out = np.full(t.shape, np.nan)
    if not m.any():
        return out
    med = float(np.median(t[m]))
    with np.errstate(divide="ignore", invalid="ignore"):
        out[m] = t[m] / med
    return out


def own_time_ratio(wall_time_seconds: np.ndarray, log_reference: np.ndarray) -> np.ndarray:
    r"""``t_i / exp(ref_i)``: the client's wall time over its own usual wall time.

    A client with several times the median data (or a slow device) is slow every
    round; a straggler fault makes a client slow against *itself*. NaN where the
    client has no reference yet (:func:`own_time_reference`) or no usable time.
    """
    t = np.asarray(wall_time_seconds, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(np.isfinite(t) & (t > 0), t / np.exp(log_reference), np.nan)


def own_time_reference(
    log_reference: np.ndarray, wall_time_seconds: np.ndarray, mask: np.ndarray, weight: float = 0.3
) -> np.ndarray:
    r"""Smoothed ``ln(wall time)`` of each client: ``ref = (1 - w) ref + w ln t`` (first: ``ln t``).

    Only the masked clients (the caller leaves out a round it judged slow, so a
    straggler's reference does not absorb the slowdown) with a positive, finite
    time move; the others keep their reference. The client reference of
    :func:`monitor.signals.norm_reference.update_reference` with a one-round start
    and no step bound (a NaN reference is one not started).
    """
    t = np.asarray(wall_time_seconds, dtype=np.float64)
    m = np.asarray(mask, dtype=bool) & np.isfinite(t) & (t > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        lt = np.where(m, np.log(np.where(m, t, 1.0)), np.nan)
    ref = np.asarray(log_reference, dtype=np.float64)
    started = np.isfinite(ref).astype(np.int64)
    out, _ = update_reference(ref, started, lt, m, need=1, rate=weight, band=np.inf)
    return out


def straggler_evidence(
    ok: np.ndarray,
    wall_z: np.ndarray,
    ratio: np.ndarray,
    own: np.ndarray,
    round_th: tuple[float, float],
    own_th: tuple[float, float],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Which clients straggle, which are slow against themselves, and the anomaly score.

    A straggler is far out in the round (``z > z_min`` *and* ``ratio >= ratio_min``,
    ``round_th``) *and* either slow against its own usual time
    (``own >= own_min``) or extreme in the round (``ratio >= extreme``, ``own_th``):
    a client without a reference (its first round) is judged by the extreme ratio
    alone. The anomaly score is ``min(z / z_min, ratio / ratio_min,
    max(own / own_min, ratio / extreme))`` (NaN ``own`` drops out of the max).

    Returns ``(straggler, slow_self, anomaly)``.
    """
    (z_min, ratio_min), (own_min, extreme) = round_th, own_th
    z0, r0, o0 = (
        np.nan_to_num(np.asarray(a, dtype=np.float64), nan=0.0) for a in (wall_z, ratio, own)
    )
    slow_self = o0 >= own_min
    straggler = (
        np.asarray(ok, bool) & (z0 > z_min) & (r0 >= ratio_min) & (slow_self | (r0 >= extreme))
    )
    with np.errstate(invalid="ignore"):
        anomaly = np.minimum(
            np.minimum(np.asarray(wall_z) / z_min, np.asarray(ratio) / ratio_min),
            np.fmax(np.asarray(own) / own_min, np.asarray(ratio) / extreme),
        )
    return straggler, slow_self, anomaly


def sampling_rate(expected: int | None, expected_clients: int | None) -> float:
    """This round's sampled share of the run's clients (1 when unknown or full)."""
    if not expected or not expected_clients or expected >= expected_clients:
        return 1.0
    return expected / expected_clients


def absence_p_value(rounds_unseen: np.ndarray, sample_rate: float) -> np.ndarray:
    r"""Chance that a healthy client is missing ``n`` rounds in a row only because it was not sampled.

    With each round sampling a share ``q`` of the clients independently of the past,
    a client that would answer whenever sampled is absent ``n`` consecutive rounds
    with probability

    .. math:: P(n) = (1 - q)^n

    This is what is left when the server reports only the clients that answered: a
    small ``P`` says the absence is not the sampling. 1 for ``n <= 0``; NaN for a
    ``q`` outside ``(0, 1]``.
    """
    n = np.asarray(rounds_unseen, dtype=np.float64)
    if not 0 < sample_rate <= 1 or not math.isfinite(sample_rate):
        return np.full(n.shape, np.nan)
    with np.errstate(divide="ignore"):
        return np.where(n <= 0, 1.0, np.power(1.0 - sample_rate, np.maximum(n, 0.0)))
