"""The statistics of one round's client updates that the update-anomaly detector judges.

Sketches and norms as sent; a client that sent no norm is judged on its
sketch's norm when nobody sent one; cosines to the aggregate sketch and to the
client's own previous sketch; robust z-scores (median/MAD) within the round.

Secure aggregation (no sketch): a client's own cosine to the previous global
update stands in for the cosine to the aggregate (one reference direction for
the whole round, so the within-round robust z means the same), and its repeat
flag marks a stale update (monitor/signals/update_scalars.py).

The norm side is judged against the client's own usual norm ratio as well as
the round's (:func:`norm_side`, :mod:`monitor.signals.norm_reference`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from monitor.detectors.base import RoundContext, nan_array
from monitor.signals import divergence, norm_reference

__all__ = ["UpdateRound", "update_round", "NormSide", "norm_side"]


@dataclass
class UpdateRound:
    """This round's update statistics (arrays over the round's clients)."""

    sketch: np.ndarray
    norm: np.ndarray
    norm_src: np.ndarray
    nonfinite: np.ndarray
    has_sk: np.ndarray
    has_cos: np.ndarray
    """A cosine to judge: from the sketch, or the client-side cosine (secure aggregation)."""
    repeated: np.ndarray
    """The client flagged its update as repeating its previous one (secure aggregation)."""
    good_norm: np.ndarray
    cos: np.ndarray
    cos_prev: np.ndarray
    norm_ratio: np.ndarray
    z_norm: np.ndarray
    z_cos: np.ndarray


def update_round(ctx: RoundContext, prev_sketch: np.ndarray) -> UpdateRound:
    """Cosines, norms and robust z-scores of this round's updates (``prev_sketch``: the state's)."""
    data, ok, n, idx = ctx.data, ctx.ok, ctx.n, ctx.idx
    sketch = np.asarray(data.sketch, dtype=np.float64)
    norm = np.asarray(data.update_norm, dtype=np.float64)
    wide = bool(sketch.shape[1])
    nonfinite = (
        data.nonfinite_update
        | data.nonfinite_loss
        | np.isinf(norm)
        | (divergence.nonfinite_rows(sketch) if wide else False)
    )
    has_sk = ok & (np.isfinite(sketch).all(axis=1) if wide else np.zeros(n, dtype=bool))
    agg = data.aggregate_sketch
    cos = nan_array(n)
    if agg is not None and has_sk.any() and np.isfinite(agg).all():
        cos[has_sk] = divergence.cosine_to(sketch[has_sk], agg)
    has_cos = has_sk.copy()
    client_cos = data.update_cosine_previous_global
    if client_cos is not None:
        use = ok & ~has_sk & np.isfinite(client_cos)
        cos[use] = client_cos[use]
        has_cos |= use
    repeated = ok & (
        np.nan_to_num(data.update_repeated, nan=0.0) > 0
        if data.update_repeated is not None
        else np.zeros(n, dtype=bool)
    )
    good_norm = ok & np.isfinite(norm)
    norm_src = norm
    if not good_norm.any() and has_sk.any():  # no norms sent: the sketch's norm stands in
        masked = np.where(has_sk[:, None], sketch, 0.0)
        norm_src = np.where(has_sk, np.linalg.norm(masked, axis=1), np.nan)
        good_norm = has_sk.copy()
    with np.errstate(divide="ignore", invalid="ignore"):
        log_norm = np.log(np.where(norm_src > 0, norm_src, np.nan))
    prev_sk = prev_sketch[idx].astype(np.float64)
    cos_prev = nan_array(n)
    has_prev = has_sk & np.isfinite(prev_sk).all(axis=1) if wide else np.zeros(n, dtype=bool)
    if has_prev.any():
        cos_prev[has_prev] = divergence.rowwise_cosine(sketch[has_prev], prev_sk[has_prev])
    return UpdateRound(
        sketch=sketch,
        norm=norm,
        norm_src=norm_src,
        nonfinite=nonfinite,
        has_sk=has_sk,
        has_cos=has_cos,
        repeated=repeated,
        good_norm=good_norm,
        cos=cos,
        cos_prev=cos_prev,
        norm_ratio=divergence.norm_ratio_to_median(norm_src, good_norm),
        z_norm=divergence.robust_z(log_norm, good_norm),
        z_cos=divergence.robust_z(cos, has_cos),
    )


@dataclass
class NormSide:
    """The norm side of update divergence this round (arrays over the round's clients)."""

    z: np.ndarray
    """Robust z of the move from the client's usual (the round's z before it has one)."""
    material: np.ndarray
    """Larger than the round's median by ``update_norm_min_ratio`` and than its usual by
    ``update_norm_min_change`` (or the stricter
    ``update_norm_unreferenced_ratio`` from the round, before it has a usual)."""
    usual: np.ndarray
    """The client's usual norm ratio to the round median (NaN before it has one)."""


def norm_side(ctx: RoundContext, state: Any, u: UpdateRound, judged: np.ndarray) -> NormSide:
    """Judge the norm against the client's own reference, then teach the reference.

    ``state`` carries ``norm_ref`` (log norm ratio) and ``norm_ref_n`` (rounds in
    it); ``judged``: clients whose update is judged (ok, neither free-riding,
    stale nor non-finite). Rounds whose norm side is material never teach it, so
    a client that explodes from its first round keeps the stricter bound.
    """
    th, idx = ctx.th, ctx.idx
    with np.errstate(divide="ignore", invalid="ignore"):
        lr = np.log(np.where(u.norm_ratio > 0, u.norm_ratio, np.nan))
    ref, cnt = state.norm_ref[idx], state.norm_ref_n[idx]
    has = cnt >= th.update_norm_reference_rounds
    use = judged & u.good_norm
    z, material = norm_reference.self_referenced_norm(
        lr,
        u.z_norm,
        ref,
        has,
        use,
        min_ratio=th.update_norm_min_ratio,
        min_change=th.update_norm_min_change,
        unreferenced_ratio=th.update_norm_unreferenced_ratio,
    )
    # only a *larger* update is material: a shrinking one is an honest client converging
    # (or one whose data the aggregate moved away from), or a free rider, which has its own
    # rule; on the recorded grid the low side found no fault that nothing else found, and
    # raised 23 of the single-round false alarms and misplaced findings
    material = material & (np.nan_to_num(lr, nan=0.0) > 0)
    state.norm_ref[idx], state.norm_ref_n[idx] = norm_reference.update_reference(
        ref,
        cnt,
        lr,
        use & ~material,
        need=int(th.update_norm_reference_rounds),
        rate=th.update_norm_reference_rate,
        band=th.update_norm_reference_band,
    )
    return NormSide(z=z, material=material & use, usual=np.where(has, np.exp(ref), np.nan))
