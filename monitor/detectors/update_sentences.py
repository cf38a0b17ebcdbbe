"""The sentences of the update-anomaly detector's findings (divergence, stale, free rider, non-finite)."""

from __future__ import annotations

from typing import Any

import numpy as np

from monitor.detectors.base import RoundContext
from monitor.detectors.output import ActiveSignal, fmt, json_num, severity_for
from monitor.detectors.update_memory import MemoryRound
from monitor.detectors.update_stats import NormSide, UpdateRound
from monitor.signals import divergence

__all__ = ["divergence_signal", "memory_divergence", "stale", "free", "nonfinite"]


def divergence_signal(
    ctx: RoundContext, state: Any, u: UpdateRound, ns: NormSide, score: np.ndarray, i: int
) -> ActiveSignal:
    th, cid = ctx.th, ctx.ids[i]
    k = int(state.update_anomaly[ctx.idx[i]])
    client_side = bool(u.has_cos[i]) and not bool(u.has_sk[i])
    target = "previous global update (client-side)" if client_side else "aggregate"
    has_usual = bool(np.isfinite(ns.usual[i]))
    usual = f"its usual {fmt(ns.usual[i])}x; " if has_usual else "no usual yet; "
    return ActiveSignal(
        kind="update_divergence",
        severity=severity_for(float(score[i]) / th.update_robust_z, th.critical_factor),
        client_id=cid,
        score=float(score[i]),
        threshold=th.update_robust_z,
        message=(
            f"client {cid}: update diverges for {k} rounds; cosine to {target} "
            f"{fmt(u.cos[i])} (robust z {fmt(u.z_cos[i], 1)}), norm {fmt(u.norm_ratio[i])}x median "
            f"({usual}robust z {fmt(ns.z[i], 1)}); threshold |z| {fmt(th.update_robust_z, 1)}"
        ),
        details={
            "cosine": json_num(u.cos[i]),
            "cosine_robust_z": json_num(u.z_cos[i]),
            "norm_ratio": json_num(u.norm_ratio[i]),
            "norm_robust_z": json_num(ns.z[i]),
            "norm_ratio_usual": json_num(ns.usual[i]),
            "streak_rounds": k,
        },
    )


def stale(ctx: RoundContext, state: Any, u: UpdateRound, i: int) -> ActiveSignal:
    cid, c = ctx.ids[i], u.cos_prev[i]
    how = f"cosine {fmt(c, 5) if np.isfinite(c) else 'n/a'}"
    if u.repeated[i] and not np.isfinite(c):
        how = "flagged as a repeat by the client"
    return ActiveSignal(
        kind="stale_update",
        severity="warning",
        client_id=cid,
        score=float(np.nan_to_num(c, nan=1.0)),
        threshold=ctx.th.stale_cosine_min,
        message=(
            f"client {cid}: update repeats its previous one for "
            f"{int(state.stale_update[ctx.idx[i]])} rounds ({how}, same norm {fmt(u.norm_src[i], 4)})"
        ),
        details={"cosine_previous": json_num(c), "norm": json_num(u.norm_src[i])}
        | ({"client_flagged_repeat": True} if bool(u.repeated[i]) else {}),
    )


def free(ctx: RoundContext, state: Any, u: UpdateRound, i: int) -> ActiveSignal:
    cid, ratio = ctx.ids[i], np.nan_to_num(u.norm_ratio[i], nan=0.0)
    return ActiveSignal(
        kind="free_rider",
        severity="warning",
        client_id=cid,
        score=float(ratio),
        threshold=ctx.th.free_rider_norm_ratio,
        message=(
            f"client {cid}: near-zero update (norm {u.norm_src[i]:.3g}, "
            f"{fmt(ratio, 4)}x the round median) for "
            f"{int(state.free_rider[ctx.idx[i]])} rounds"
        ),
        details={"norm": json_num(u.norm_src[i]), "norm_ratio": json_num(u.norm_ratio[i])},
    )


def nonfinite(ctx: RoundContext, u: UpdateRound, i: int) -> ActiveSignal:
    cid, data = ctx.ids[i], ctx.data
    parts = (
        ("update", bool(data.nonfinite_update[i] or np.isinf(u.norm[i]))),
        ("sketch", bool(u.sketch.shape[1] and divergence.nonfinite_rows(u.sketch[i : i + 1])[0])),
        ("loss", bool(data.nonfinite_loss[i])),
    )
    what = [w for w, b in parts if b]
    return ActiveSignal(
        kind="nonfinite_update",
        severity="critical",
        client_id=cid,
        score=1.0,
        threshold=0.5,
        message=(
            f"client {cid}: sent NaN/inf (or values beyond 1e150, too large to compute with) "
            f"in its {' and '.join(what) or 'update'}"
        ),
        details={"fields": what},
    )


_MEMORY_SENTENCE = {
    "colluding": "sends the same update as {identical} other client(s) this round (colluding)",
    "sign_reversal": "update turned round against its previous one (cosine {cos_prev})",
    "direction_change": "updates no longer point like its own earlier ones (cosine to previous "
    "{cos_prev}; evidence {dir_ev} over threshold {dir_th})",
    "cosine_drop": "update sits far below its usual place among the others' for several rounds "
    "(leave-one-out cosine {loo}; evidence {cos_ev} over threshold {cos_th})",
}


def memory_divergence(ctx: Any, u: Any, mem: MemoryRound, i: int) -> ActiveSignal:
    th, cid = ctx.th, ctx.ids[i]
    pattern = mem.pattern[i] or "cosine_drop"
    ratio = max(
        mem.cosine_evidence[i] / th.divergence_cusum_threshold,
        mem.direction_evidence[i] / th.direction_change_threshold,
        1.0,
    )
    what = _MEMORY_SENTENCE[pattern].format(
        identical=int(mem.identical[i]),
        cos_prev=fmt(u.cos_prev[i]) if np.isfinite(u.cos_prev[i]) else "n/a",
        dir_ev=fmt(mem.direction_evidence[i]),
        dir_th=fmt(th.direction_change_threshold),
        loo=fmt(mem.loo_cosine[i]) if np.isfinite(mem.loo_cosine[i]) else "n/a",
        cos_ev=fmt(mem.cosine_evidence[i], 1),
        cos_th=fmt(th.divergence_cusum_threshold, 1),
    )
    return ActiveSignal(
        kind="update_divergence",
        severity=severity_for(ratio, th.critical_factor),
        client_id=cid,
        score=float(ratio),
        threshold=1.0,
        message=f"client {cid}: {what}",
        details={
            "pattern": pattern,
            "cosine_leave_one_out": json_num(mem.loo_cosine[i]),
            "cosine_previous": json_num(u.cos_prev[i]),
            "cosine_evidence": json_num(mem.cosine_evidence[i]),
            "direction_evidence": json_num(mem.direction_evidence[i]),
            "identical_to": int(mem.identical[i]),
        },
    )
