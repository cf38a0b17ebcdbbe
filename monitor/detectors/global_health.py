"""Global health: the global model's loss stagnates or jumps, the aggregate is non-finite,
or accuracy stays far below a centralized baseline.

Reads the update-anomalies step (``ctx.output("update_anomalies")``) to say
how many clients sent non-finite updates when the aggregate is non-finite.

A flat loss is not always a problem: a model that learned and whose updates
are settling has *converged* (:func:`monitor.signals.health.converged`: best
loss at least ``converged_min_loss_gain`` below the first round's, aggregate
update norm of the last window at most ``converged_max_norm_ratio`` x the first
window's). Its stagnation is reported as ``info`` with ``details.converged`` and
does not page; a run that stalls without having learned, or keeps taking
full-size steps, is *stuck* and stays a warning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from monitor.detectors.base import (
    Detector,
    DetectorStateBase,
    FindingKind,
    RoundContext,
    RoundScore,
    Step,
    threshold,
)
from monitor.detectors.fairness import HISTORY_CAP
from monitor.detectors.output import ActiveSignal, fmt, pct, severity_for
from monitor.signals import health

__all__ = ["GlobalHealth", "GlobalHealthThresholds", "GlobalHealthState"]

NORM_CAP = 4096
"""Aggregate norms kept: the convergence test compares the first window with the last."""


@dataclass(frozen=True)
class GlobalHealthThresholds:
    stagnation_window: int = threshold(10, "Rounds over which the best global loss must improve.")
    stagnation_min_improvement: float = threshold(
        0.005, "Relative improvement of the best global loss below which training stagnates."
    )
    loss_jump_ratio: float = threshold(
        1.5, "Global loss over the median of the previous rounds beyond which training diverges."
    )
    centralized_gap_max: float = threshold(
        0.05,
        "Centralized-baseline accuracy minus global accuracy beyond which the gap is reported.",
    )
    centralized_gap_min_rounds: int = threshold(
        10, "Rounds analysed before the centralized gap is judged."
    )
    converged_min_loss_gain: float = threshold(
        0.2, "A stagnating run has converged if its best loss is this much below round 1's..."
    )
    converged_max_norm_ratio: float = threshold(
        0.5, "... and its recent aggregate update norm at most this x its first rounds'."
    )


@dataclass
class GlobalHealthState(DetectorStateBase):
    loss_history: np.ndarray = field(default_factory=lambda: np.zeros(0))
    norm_history: np.ndarray = field(default_factory=lambda: np.zeros(0))
    """Aggregate update norms from round 1 on (capped)."""
    first_loss: float = math.nan
    """The first finite global loss (the convergence test's "learned" reference)."""


class GlobalHealth(Detector):
    name = "global_health"
    kinds = (
        FindingKind(
            "global_stagnation",
            "federation",
            "The global loss stopped improving.",
            "round 30: best global loss improved 0.21% over the last 10 rounds; threshold 0.50%",
        ),
        FindingKind(
            "global_divergence",
            "federation",
            "The global loss jumped against the previous rounds.",
            "round 14: global eval loss 3.912 is 2.60x the median of the previous rounds; "
            "threshold 1.50x",
        ),
        FindingKind(
            "nonfinite_aggregate",
            "federation",
            "The aggregate (global loss, aggregate norm or sketch) holds NaN/inf.",
            "round 9: the aggregate holds NaN/inf (global loss nan, aggregate norm nan); 2 clients "
            "sent non-finite updates",
        ),
        FindingKind(
            "centralized_gap",
            "federation",
            "Global accuracy stays far below the centralized baseline.",
            "round 20: global accuracy 81% is 12.0 pts below the centralized baseline 93%; "
            "threshold 5.0 pts",
        ),
    )
    Thresholds = GlobalHealthThresholds
    State = GlobalHealthState
    round_scores = (
        RoundScore(
            "global_eval_loss",
            "Global model's evaluation loss at the latest analysed round.",
            "fl_run_global_eval_loss",
        ),
        RoundScore(
            "global_eval_accuracy",
            "Global model's evaluation accuracy at the latest analysed round.",
            "fl_run_global_eval_accuracy_ratio",
        ),
        RoundScore(
            "global_loss_jump_ratio",
            "Global evaluation loss over its recent best (> 1 = worse).",
            "fl_run_global_loss_jump_ratio",
        ),
        RoundScore(
            "global_stagnation_improvement",
            "Relative improvement of the global loss over the stagnation window.",
            "fl_run_global_stagnation_improvement_ratio",
        ),
        RoundScore(
            "nonfinite_aggregate",
            "1 if the latest aggregate (loss, norm or sketch) was non-finite.",
            "fl_run_nonfinite_aggregate",
        ),
        RoundScore(
            "centralized_gap",
            "Centralized-baseline accuracy minus global accuracy (signed, -1 to 1).",
            "fl_run_centralized_gap_ratio",
        ),
    )

    def step(self, ctx: RoundContext, state: GlobalHealthState) -> Step:
        th, data, rnd = ctx.th, ctx.data, ctx.round
        gl = data.global_eval_loss
        gl_f = math.nan if gl is None else float(gl)
        jump = health.loss_jump_ratio(gl_f, state.loss_history)
        state.loss_history = np.append(state.loss_history, gl_f)[-HISTORY_CAP:]
        stag = health.stagnation(state.loss_history, th.stagnation_window)
        if math.isnan(state.first_loss) and math.isfinite(gl_f):
            state.first_loss = gl_f
        agg = data.aggregate_update_norm
        state.norm_history = np.append(state.norm_history, math.nan if agg is None else float(agg))[
            -NORM_CAP:
        ]
        acc = data.global_eval_accuracy
        bad = health.nonfinite_aggregate(gl, data.aggregate_update_norm, data.aggregate_sketch)
        gap = health.centralized_gap(ctx.cfg.centralized_accuracy, acc)
        rs = {
            "global_eval_loss": gl_f,
            "global_eval_accuracy": math.nan if acc is None else float(acc),
            "global_loss_jump_ratio": jump,
            "global_stagnation_improvement": stag,
            "nonfinite_aggregate": float(bad),
            "centralized_gap": gap,
        }
        active = []
        if bad:
            clients_bad = int(ctx.output("update_anomalies").values["nonfinite"].sum())
            active.append(
                ActiveSignal(
                    kind="nonfinite_aggregate",
                    severity="critical",
                    client_id=None,
                    score=1.0,
                    threshold=0.5,
                    message=(
                        f"round {rnd}: the aggregate holds NaN/inf (global loss {gl}, aggregate norm "
                        f"{data.aggregate_update_norm}); {clients_bad} clients sent non-finite updates"
                    ),
                    details={"clients_nonfinite": clients_bad},
                )
            )
        elif math.isfinite(jump) and jump > th.loss_jump_ratio:
            active.append(
                ActiveSignal(
                    kind="global_divergence",
                    severity=severity_for(jump / th.loss_jump_ratio, th.critical_factor),
                    client_id=None,
                    score=jump,
                    threshold=th.loss_jump_ratio,
                    message=(
                        f"round {rnd}: global eval loss {fmt(gl_f, 3)} is {fmt(jump)}x the median of the "
                        f"previous rounds; threshold {fmt(th.loss_jump_ratio)}x"
                    ),
                    details={"global_eval_loss": gl_f},
                )
            )
        if math.isfinite(stag) and stag < th.stagnation_min_improvement:
            done = health.converged(
                np.concatenate([[state.first_loss], state.loss_history]),
                state.norm_history,
                th.stagnation_window,
                min_loss_gain=th.converged_min_loss_gain,
                max_norm_ratio=th.converged_max_norm_ratio,
            )
            verdict = (
                "converged (learned, updates settling): not a fault"
                if done
                else "stuck (flat without having learned, or steps not shrinking)"
            )
            active.append(
                ActiveSignal(
                    kind="global_stagnation",
                    severity="info" if done else "warning",
                    client_id=None,
                    score=stag,
                    threshold=th.stagnation_min_improvement,
                    message=(
                        f"round {rnd}: best global loss improved {fmt(100 * stag, 2)}% over the last "
                        f"{th.stagnation_window} rounds; threshold {fmt(100 * th.stagnation_min_improvement, 2)}%; "
                        f"{verdict}"
                    ),
                    details={"window_rounds": th.stagnation_window, "converged": done},
                )
            )
        judged = ctx.rounds_seen + 1 >= th.centralized_gap_min_rounds
        if math.isfinite(gap) and gap > th.centralized_gap_max and judged:
            base = ctx.cfg.centralized_accuracy
            active.append(
                ActiveSignal(
                    kind="centralized_gap",
                    severity="info",
                    client_id=None,
                    score=gap,
                    threshold=th.centralized_gap_max,
                    message=(
                        f"round {rnd}: global accuracy {pct(acc)} is "
                        f"{fmt(100 * gap, 1)} pts below the centralized baseline {pct(base)}; "
                        f"threshold {fmt(100 * th.centralized_gap_max, 1)} pts"
                    ),
                    details={"centralized_accuracy": base},
                )
            )
        return Step(round_scores=rs, active=active)
