"""Performance drift: a change point in the client's evaluation loss of the global model.

Page-Hinkley (as river's ``PageHinkley``, vectorised over clients) on the
client's *relative* log loss, ``log(loss / round median)``: the global model
improving for everyone moves the median, not the relative loss, so only a
client that gets worse than the others raises a change (docs/signals.md,
"Performance drift").

A change also needs the client's *own* loss to have risen above the best level
it held (``changepoint_min_own_rise``): under strong label skew the median
falls as the global model learns the common classes while a minority-class
client's loss stays flat, so its relative loss climbs round after round
without anything getting worse for it. That is the others improving, not this
client degrading.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from monitor.detectors.base import (
    ClientScore,
    Detector,
    DetectorStateBase,
    FindingKind,
    RoundContext,
    Step,
    Streak,
    client_field,
    threshold,
)
from monitor.detectors.output import ActiveSignal, fmt, json_num, severity_for
from monitor.signals import changepoint, divergence

__all__ = ["PerformanceDrift", "PerformanceDriftThresholds", "PerformanceDriftState"]


@dataclass(frozen=True)
class PerformanceDriftThresholds:
    changepoint_delta: float = threshold(
        0.20, "Page-Hinkley tolerance: relative log-loss increases below this are ignored."
    )
    changepoint_lambda: float = threshold(1.5, "Page-Hinkley statistic that signals a change.")
    changepoint_min_rounds: int = threshold(
        5, "Rounds a client must have reported before a change can be signalled."
    )
    changepoint_min_own_rise: float = threshold(
        0.2,
        "... and the client's own log eval loss at least this far above the best (smoothed) "
        "level it held (0.2: 1.22x); a relative rise alone can be the others improving.",
    )


@dataclass
class PerformanceDriftState(DetectorStateBase):
    """Page-Hinkley accumulators per client (:class:`monitor.signals.changepoint.PageHinkleyState`)."""

    ph_n: np.ndarray = client_field(dtype=np.int64)
    ph_mean: np.ndarray = client_field()
    ph_cum: np.ndarray = client_field()
    ph_cum_min: np.ndarray = client_field(fill=np.inf)
    own_ewma: np.ndarray = client_field(fill=np.nan)
    """Smoothed log eval loss of the client (:func:`monitor.signals.changepoint.own_loss_rise`)."""
    own_best: np.ndarray = client_field(fill=np.inf)
    """Lowest smoothed log eval loss the client has held."""
    streak: np.ndarray = client_field(dtype=np.int64)


class PerformanceDrift(Detector):
    """``values``: ``flag`` (change signalled), ``stat`` (Page-Hinkley statistic)."""

    name = "performance_drift"
    kinds = (
        FindingKind(
            "performance_drift",
            "client",
            "The client's loss under the global model rose against the other clients'.",
            "client c012: eval loss of the global model changed (Page-Hinkley 2.31 > 1.50); "
            "loss 1.204 is 2.45x the round's median client and 1.62x its own best",
        ),
    )
    Thresholds = PerformanceDriftThresholds
    calibrated = ("changepoint_lambda",)
    State = PerformanceDriftState
    client_scores = (
        ClientScore(
            "eval_loss_relative_log",
            "Log of the client's evaluation loss over the round's median client loss.",
        ),
        ClientScore(
            "eval_loss_changepoint",
            "Page-Hinkley statistic on the client's relative log evaluation loss of the global "
            "model.",
            metric="fl_client_eval_loss_changepoint",
        ),
    )
    streaks = (Streak("performance_drift", "evaluation-loss change point"),)
    flagged_counts = ("performance_drift",)

    def step(self, ctx: RoundContext, state: PerformanceDriftState) -> Step:
        th, idx, data = ctx.th, ctx.idx, ctx.data
        rel = changepoint.relative_log_loss(data.eval_loss, ctx.ok & ~data.nonfinite_loss)
        ph = changepoint.PageHinkleyState(
            state.ph_n[idx], state.ph_mean[idx], state.ph_cum[idx], state.ph_cum_min[idx]
        )
        ph, stat, change = changepoint.page_hinkley_update(
            ph,
            rel,
            delta=th.changepoint_delta,
            threshold=th.changepoint_lambda,
            min_instances=th.changepoint_min_rounds,
            reset_on_alarm=False,
        )
        ok_loss = ctx.ok & ~data.nonfinite_loss & (np.asarray(data.eval_loss) > 0)
        own = np.log(np.where(ok_loss, np.asarray(data.eval_loss, dtype=np.float64), np.nan))
        rise, state.own_ewma[idx], state.own_best[idx] = changepoint.own_loss_rise(
            own, state.own_ewma[idx], state.own_best[idx]
        )
        # a relative change without the client's own loss rising is the others improving:
        # no alarm, and the accumulators keep their evidence for when it does rise
        flag = change & (rise >= th.changepoint_min_own_rise)
        ph = changepoint.page_hinkley_reset(ph, flag)
        state.ph_n[idx], state.ph_mean[idx] = ph.n, ph.mean
        state.ph_cum[idx], state.ph_cum_min[idx] = ph.cum, ph.cum_min
        if ctx.calibrating:
            eligible = np.isfinite(stat) & ((ph.n >= th.changepoint_min_rounds) | flag)
            ctx.collect("changepoint_lambda", stat[eligible & ctx.healthy])
        state.streak[idx] = divergence.update_streak(state.streak[idx], flag, np.isfinite(stat))
        ctx.add_anomaly(stat / th.changepoint_lambda)
        active = []
        for i in np.flatnonzero(flag):
            cid = ctx.ids[i]
            active.append(
                ActiveSignal(
                    kind="performance_drift",
                    severity=severity_for(
                        float(stat[i] / th.changepoint_lambda), th.critical_factor
                    ),
                    client_id=cid,
                    score=float(stat[i]),
                    threshold=th.changepoint_lambda,
                    message=(
                        f"client {cid}: eval loss of the global model changed (Page-Hinkley "
                        f"{fmt(stat[i])} > {fmt(th.changepoint_lambda)}); loss {fmt(data.eval_loss[i], 3)} is "
                        f"{fmt(math.exp(rel[i]))}x the round's median client and "
                        f"{fmt(math.exp(rise[i]))}x its own best"
                    ),
                    details={
                        "eval_loss": json_num(data.eval_loss[i]),
                        "relative_log_loss": json_num(rel[i]),
                        "own_log_loss_rise": json_num(rise[i]),
                    },
                )
            )
        return Step(
            client_scores={
                "eval_loss_relative_log": rel,
                "eval_loss_changepoint": stat,
                "performance_drift_streak_rounds": state.streak[idx].astype(np.float64),
            },
            round_scores={"clients_performance_drift": float(flag.sum())},
            active=active,
            values={"flag": flag, "stat": stat},
        )
