"""Update anomalies: divergent, stale, free-riding and non-finite client updates.

From the update sketch (a fixed-seed random projection of the model delta)
and the update norm: cosine to the aggregate sketch and norm over the round
median, each as a robust z-score (median/MAD) within the round; cosine to the
client's own previous sketch (stale = a repeated update); a near-zero norm
(free rider); NaN/inf anywhere (docs/signals.md, "Update divergence, stale
updates, free riders").

The single-round divergence rule (besides the memory of
:mod:`monitor.detectors.update_memory`): a round is unusual when either side's
robust z is beyond ``update_robust_z`` *with a material effect*, and
``update_divergence`` fires after ``update_divergence_min_streak`` unusual
rounds in a row.

* Norm side. A client with more local data takes more steps and sends a norm
  3-5x the round's median every round (fewer: a third of it); that is its
  normal, not a fault, and was the largest share of the benchmark's client
  false alarms. So once a client has a usual (its log norm ratio to the round
  median over its first ``update_norm_reference_rounds`` usable rounds, then an
  EWMA at ``update_norm_reference_rate`` whose step is clipped to
  ``update_norm_reference_band``) the norm must be ``update_norm_min_ratio``
  x off the round median *and* ``update_norm_min_change`` x off its usual, away
  from the median, and the z is the robust z of that move among the other
  clients' moves from theirs.
  Before it has a usual, the round's z with the stricter
  ``update_norm_unreferenced_ratio``. Rounds with a material norm never teach
  the usual, so a client that explodes from its very first round stays flagged.
* Cosine side: the cosine ``update_cosine_min_drop`` below the round's median.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from monitor.detectors import update_memory as memory
from monitor.detectors import update_sentences as sentences
from monitor.detectors.base import (
    ClientScore,
    Detector,
    FindingKind,
    RoundContext,
    Step,
    Streak,
    client_field,
    threshold,
)
from monitor.detectors.update_stats import norm_side, update_round
from monitor.signals import divergence

__all__ = ["UpdateAnomalies", "UpdateThresholds", "UpdateState"]


@dataclass(frozen=True)
class UpdateThresholds(memory.MemoryThresholds):
    update_robust_z: float = threshold(
        3.5, "Robust z (median/MAD) beyond which an update is unusual."
    )
    update_norm_min_ratio: float = threshold(
        3.0,
        "The norm side of divergence also needs norm >= this x the round median (or <= 1/this)...",
    )
    update_norm_min_change: float = threshold(
        1.75,
        "... and, once the client has a usual norm ratio, a ratio >= this x its usual (or <= "
        "1/this), away from the median.",
    )
    update_norm_reference_rounds: int = threshold(
        3, "Usable rounds of a client's norm ratio its usual (reference) is first made of."
    )
    update_norm_unreferenced_ratio: float = threshold(
        6.0,
        "Before a client has a usual norm ratio, the norm side needs norm >= this x the round "
        "median (or <= 1/this).",
    )
    update_norm_reference_rate: float = threshold(
        0.2, "EWMA weight with which a client's usual norm ratio follows it once made..."
    )
    update_norm_reference_band: float = threshold(
        1.5, "... each round's step clipped to this factor (one round moves it little)."
    )
    update_cosine_min_drop: float = threshold(
        0.5, "The cosine side also needs the cosine this far below the round's median cosine."
    )
    update_divergence_min_streak: int = threshold(
        2, "Consecutive unusual rounds before update_divergence fires."
    )
    stale_cosine_min: float = threshold(
        0.999999, "Cosine to the client's previous sketch at or above which an update repeats."
    )
    stale_norm_rtol: float = threshold(
        1e-6, "Relative norm difference to the previous update within which it repeats."
    )
    free_rider_norm_ratio: float = threshold(
        0.01, "Norm at or below this x the round median (or exactly 0) is a free rider."
    )


@dataclass
class UpdateState(memory.MemoryState):
    prev_sketch: np.ndarray = client_field(fill=np.nan, dtype=np.float32)
    prev_norm: np.ndarray = client_field(fill=np.nan)
    update_anomaly: np.ndarray = client_field(dtype=np.int64)
    stale_update: np.ndarray = client_field(dtype=np.int64)
    free_rider: np.ndarray = client_field(dtype=np.int64)
    nonfinite_update: np.ndarray = client_field(dtype=np.int64)
    """Streaks (consecutive observed rounds) of each signal."""

    # --- norm reference (update_stats.norm_side) -------------------------------------
    # additive (no LAYOUT bump, base.DetectorStateBase.unpack): a state stored before
    # these fields reads with every client at 0 rounds, i.e. no usual yet
    norm_ref: np.ndarray = client_field()
    norm_ref_n: np.ndarray = client_field(dtype=np.int64)
    """The client's usual log norm ratio to the round median, and the rounds in it."""
    # --- end norm reference ----------------------------------------------------------

    @classmethod
    def fresh(cls, cfg: Any, num_clients: int) -> UpdateState:
        out = cls(prev_sketch=np.full((0, cfg.sketch_dim), np.nan, dtype=np.float32))
        out.grow(num_clients, 0)
        return out


class UpdateAnomalies(Detector):
    """``values``: ``nonfinite`` (clients that sent NaN/inf), ``divergent`` (update_divergence fired)."""

    name = "update_anomalies"
    kinds = (
        FindingKind(
            "update_divergence",
            "client",
            "The client's update points elsewhere or is far larger/smaller than the round's, for "
            "several rounds.",
            "client c004: update diverges for 2 rounds; cosine to aggregate -0.31 (robust z -6.2), "
            "norm 1.02x median (its usual 0.98x; robust z 0.1); threshold |z| 3.5",
        ),
        FindingKind(
            "stale_update",
            "client",
            "The client re-sends its previous update.",
            "client c009: update repeats its previous one for 3 rounds (cosine 1.00000, same norm "
            "0.4121)",
        ),
        FindingKind(
            "free_rider",
            "client",
            "The client sends a near-zero update.",
            "client c002: near-zero update (norm 1e-06, 0.0000x the round median) for 4 rounds",
        ),
        FindingKind(
            "nonfinite_update",
            "client",
            "The client sent NaN/inf in its update, sketch or loss, or a value beyond 1e150 "
            "there (too large to square: treated as infinite).",
            "client c017: sent NaN/inf (or values beyond 1e150, too large to compute with) in its "
            "update and sketch",
        ),
    )
    Thresholds = UpdateThresholds
    calibrated = ("update_robust_z",)
    State = UpdateState
    client_scores = (
        ClientScore(
            "update_cosine",
            "Cosine between the client's update sketch and the aggregate update sketch.",
            metric="fl_client_update_cosine",
            quantile="fl_run_client_update_cosine_quantile",
            quantile_what="client update cosine",
        ),
        ClientScore(
            "update_cosine_robust_z",
            "Robust z-score (median/MAD) of the client's update cosine within the round (low = "
            "divergent).",
            metric="fl_client_update_cosine_robust_z",
        ),
        ClientScore(
            "update_cosine_previous",
            "Cosine between the client's sketch and its own previous sketch (1 = repeated).",
        ),
        ClientScore(
            "update_norm_ratio",
            "Client's update L2 norm over the round's median client update norm.",
            metric="fl_client_update_norm_ratio",
            quantile="fl_run_client_update_norm_ratio_quantile",
            quantile_what="client update norm ratio",
        ),
        ClientScore(
            "update_norm_robust_z",
            "Robust z-score (median/MAD) of the client's update norm within the round.",
            metric="fl_client_update_norm_robust_z",
        ),
        *memory.MEMORY_CLIENT_SCORES,
    )
    streaks = (
        Streak("update_anomaly", "update divergence (norm or direction)"),
        Streak("stale_update", "stale (repeated) update"),
        Streak("free_rider", "near-zero (free-riding) update"),
        Streak("nonfinite_update", "non-finite (NaN/Inf) update or loss"),
    )
    flagged_counts = ("update_divergence", "stale_update", "free_rider", "nonfinite_update")

    def step(self, ctx: RoundContext, state: UpdateState) -> Step:
        th, ok, idx = ctx.th, ctx.ok, ctx.idx
        u = update_round(ctx, state.prev_sketch)
        repeats = divergence.stale_updates(
            u.cos_prev, u.norm_src, state.prev_norm[idx], th.stale_cosine_min, th.stale_norm_rtol
        )
        stale = ok & (repeats | u.repeated)  # u.repeated: the client's own flag (secure agg.)
        free = u.good_norm & divergence.free_riders(
            u.norm_ratio, u.norm_src, th.free_rider_norm_ratio
        )
        # a robust z says "unusual for this round"; when the round's spread is tiny
        # (IID clients) small differences are far out, so each side also needs a
        # material effect: a norm off by a factor from the round and from the
        # client's own usual (more local data: more steps, a larger norm, every
        # round), a cosine well below the round's
        ns = norm_side(ctx, state, u, ok & ~free & ~stale & ~u.nonfinite)
        score = divergence.divergence_score(
            ns.z,
            u.norm_ratio,
            u.z_cos,
            u.cos,
            u.has_cos,
            z_cap=th.update_robust_z,
            norm_min_ratio=th.update_norm_min_ratio,
            cosine_min_drop=th.update_cosine_min_drop,
            norm_material=ns.material,
        )
        unusual = (
            ok
            & ~free
            & ~stale
            & ~u.nonfinite
            & (np.nan_to_num(score, nan=0.0) > th.update_robust_z)
        )
        ctx.collect("update_robust_z", score[ctx.healthy & ~free & ~stale])
        if u.sketch.shape[1]:
            state.prev_sketch[idx[u.has_sk]] = u.sketch[u.has_sk].astype(np.float32)
        upd = ok & np.isfinite(u.norm_src)
        state.prev_norm[idx[upd]] = u.norm_src[upd]
        everyone = np.ones(ctx.n, dtype=bool)
        for name, flag, observed in (
            ("update_anomaly", unusual, ok),
            ("stale_update", stale, ok),
            ("free_rider", free, ok),
            ("nonfinite_update", u.nonfinite, everyone),
        ):
            streak = getattr(state, name)
            streak[idx] = divergence.update_streak(streak[idx], flag, observed)
        persistent = state.update_anomaly[idx] >= th.update_divergence_min_streak
        judged = ok & u.has_sk & ~free & ~stale & ~u.nonfinite
        mem = memory.memory_step(ctx, state, u, judged)
        divergent = (persistent & unusual) | mem.flag
        # np.minimum, not fmin: a missing score (too few clients, a failed client) must stay
        # missing (0 in the anomaly score), not become exactly the alarm line.
        capped = np.where(unusual | persistent, score, np.minimum(score, th.update_robust_z))
        ctx.add_anomaly(capped / th.update_robust_z)
        ctx.add_anomaly(np.where(stale | free, 1.0, 0.0))
        ctx.mark_infinite_anomaly(u.nonfinite)
        active = [
            sentences.divergence_signal(ctx, state, u, ns, score, i)
            if persistent[i] and unusual[i]
            else sentences.memory_divergence(ctx, u, mem, i)
            for i in np.flatnonzero(divergent)
        ]
        active += [sentences.stale(ctx, state, u, i) for i in np.flatnonzero(stale)]
        active += [sentences.free(ctx, state, u, i) for i in np.flatnonzero(free)]
        active += [sentences.nonfinite(ctx, u, i) for i in np.flatnonzero(u.nonfinite)]
        client_scores = {
            "update_cosine": u.cos,
            "update_cosine_robust_z": u.z_cos,
            "update_cosine_previous": u.cos_prev,
            "update_norm_ratio": u.norm_ratio,
            "update_norm_robust_z": u.z_norm,
            **memory.memory_scores(mem, th),
        }
        for s in self.streaks:
            client_scores[s.score] = getattr(state, s.name)[idx].astype(np.float64)
        return Step(
            client_scores=client_scores,
            round_scores={
                "clients_update_divergence": float(divergent.sum()),
                "clients_stale_update": float(stale.sum()),
                "clients_free_rider": float(free.sum()),
                "clients_nonfinite_update": float(u.nonfinite.sum()),
            },
            active=active,
            values={"nonfinite": u.nonfinite, "divergent": divergent},
        )
