"""Label drift: a client's label histogram against its own reference rounds (Jensen-Shannon, base 2).

The reference is the sum of the client's first ``reference_rounds`` reported
histograms that did not drift. A client is judged from its first
``reference_min_rounds`` on (the noise floor widens with a small reference), and a
round that drifts against the partial reference does not join it: under partial
participation a client sampled in 3 of 10 rounds often has fewer than
``reference_rounds`` reports before a fault starts, and a reference completed from
drifted rounds would hide the drift for good. The threshold is ``sqrt(label_drift_js^2 + q)`` with ``q`` the
noise floor: the ``1 - drift_null_alpha`` quantile of JS^2 under sampling
(and declared local-DP) noise alone, so small clients and noised histograms
do not alarm on noise (docs/signals.md, "Label drift").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
    nan_array,
    threshold,
)
from monitor.detectors.output import ActiveSignal, fmt, json_num, pct, severity_for
from monitor.signals import divergence, drift

__all__ = ["LabelDrift", "LabelDriftThresholds", "LabelDriftState"]


@dataclass(frozen=True)
class LabelDriftThresholds:
    reference_rounds: int = threshold(
        3, "Rounds each client's reference histograms are summed over (label and feature drift)."
    )
    reference_min_rounds: int = threshold(
        1,
        "Reference rounds a client is judged from (label and feature drift); until it has "
        "reference_rounds, rounds that do not drift keep joining it.",
    )
    label_drift_js: float = threshold(0.20, "JS distance (base 2) beyond the noise floor.")


@dataclass
class LabelDriftState(DetectorStateBase):
    ref_label_counts: np.ndarray = client_field()
    ref_label_rounds: np.ndarray = client_field(dtype=np.int64)
    ref_label_noise_var: np.ndarray = client_field()
    streak: np.ndarray = client_field(dtype=np.int64)

    @classmethod
    def fresh(cls, cfg: Any, num_clients: int) -> LabelDriftState:
        out = cls(ref_label_counts=np.zeros((0, cfg.num_classes)))
        out.grow(num_clients, 0)
        return out


class LabelDrift(Detector):
    """Per client: JS distance of this round's labels to the client's reference rounds.

    ``values``: ``flag`` (drifting clients), ``ready`` (reference complete),
    ``ratio`` (JS over threshold), ``js`` (JS to the reference).
    """

    name = "label_drift"
    kinds = (
        FindingKind(
            "label_drift",
            "client",
            "The client's label mix moved away from its own reference rounds.",
            "client h-07: class 3 share 12% -> 61% since round 15; JS 0.41 vs reference; "
            "threshold 0.22",
        ),
    )
    Thresholds = LabelDriftThresholds
    calibrated = ("label_drift_js",)
    State = LabelDriftState
    client_scores = (
        ClientScore(
            "label_drift_js_reference",
            "Jensen-Shannon distance (base 2) of the client's label histogram to its own "
            "reference rounds.",
            metric="fl_client_label_drift_distance",
            quantile="fl_run_client_label_drift_distance_quantile",
            quantile_what="client label drift JS distance",
        ),
        ClientScore(
            "label_drift_js_federation",
            "Jensen-Shannon distance (base 2) of the client's label histogram to the federation's.",
            metric="fl_client_label_drift_federation_distance",
        ),
        ClientScore(
            "label_drift_threshold",
            "The client's noise-adjusted label drift threshold this round.",
        ),
        ClientScore(
            "label_drift_ratio",
            "Client's label drift over its threshold (>= 1 is drift).",
            metric="fl_client_label_drift_threshold_ratio",
        ),
    )
    streaks = (Streak("label_drift", "label distribution drift"),)
    flagged_counts = ("label_drift",)

    def step(self, ctx: RoundContext, state: LabelDriftState) -> Step:
        th, n, idx = ctx.th, ctx.n, ctx.idx
        lh = drift.denoise(ctx.data.label_hist)
        _, lh_total = drift.normalize_rows(lh)
        has_lh = ctx.ok & np.isfinite(lh_total)
        ref_counts = state.ref_label_counts[idx]
        ref_rounds = state.ref_label_rounds[idx]
        ready = has_lh & (ref_rounds >= max(1, th.reference_min_rounds))
        js_ref, label_thr = nan_array(n), nan_array(n)
        if ready.any():
            r = ref_counts[ready]
            n_ref = r.sum(axis=1)
            m = (r + 0.5) / (n_ref + 0.5 * ctx.cfg.num_classes)[:, None]
            js_ref[ready] = drift.js_distance(r, lh[ready])
            qn = drift.js_null_quantile(
                m,
                lh_total[ready],
                n_ref,
                ctx.noise_var[ready],
                state.ref_label_noise_var[idx][ready],
                th.drift_null_alpha,
            )
            label_thr[ready] = np.sqrt(th.label_drift_js**2 + qn)
            if ctx.calibrating:
                excess = np.sqrt(np.clip(js_ref[ready] ** 2 - qn, 0, None))
                ctx.collect("label_drift_js", excess[ctx.healthy[ready]])
        js_fed = nan_array(n)
        if has_lh.any():
            js_fed[has_lh] = drift.js_distance(lh[has_lh], lh[has_lh].sum(axis=0))
        ratio = js_ref / label_thr
        flag = ready & (js_ref > label_thr)
        building = has_lh & (ref_rounds < th.reference_rounds) & ~flag
        if building.any():
            bi = idx[building]
            state.ref_label_counts[bi] += lh[building]
            state.ref_label_rounds[bi] += 1
            state.ref_label_noise_var[bi] += ctx.noise_var[building]
        state.streak[idx] = divergence.update_streak(state.streak[idx], flag, ready)
        ctx.add_anomaly(ratio)
        active = [
            self._signal(ctx, state, i, lh[i], js_ref, js_fed, label_thr, ratio)
            for i in np.flatnonzero(flag)
        ]
        return Step(
            client_scores={
                "label_drift_js_reference": js_ref,
                "label_drift_js_federation": js_fed,
                "label_drift_threshold": label_thr,
                "label_drift_ratio": ratio,
                "label_drift_streak_rounds": state.streak[idx].astype(np.float64),
            },
            round_scores={"clients_label_drift": float(flag.sum())},
            active=active,
            values={"flag": flag, "ready": ready, "ratio": ratio, "js": js_ref},
        )

    def _signal(
        self,
        ctx: RoundContext,
        state: LabelDriftState,
        i: int,
        cur: np.ndarray,
        js_ref: np.ndarray,
        js_fed: np.ndarray,
        thr: np.ndarray,
        ratio: np.ndarray,
    ) -> ActiveSignal:
        cfg, cid = ctx.cfg, ctx.ids[i]
        r = state.ref_label_counts[ctx.idx[i]]
        top, _ = drift.top_movers(r[None, :], cur[None, :], k=3)
        p_ref, p_cur = r / r.sum(), cur / cur.sum()
        c = int(top[0, 0])
        movers = [
            {
                "class": int(k),
                "name": cfg.class_name(int(k)),
                "reference_share": float(p_ref[k]),
                "share": float(p_cur[k]),
            }
            for k in top[0]
        ]
        return ActiveSignal(
            kind="label_drift",
            severity=severity_for(float(ratio[i]), ctx.th.critical_factor),
            client_id=cid,
            score=float(js_ref[i]),
            threshold=float(thr[i]),
            message=(
                f"client {cid}: {cfg.class_name(c)} share {pct(p_ref[c])} -> {pct(p_cur[c])} "
                f"since round {ctx.since(state.streak, i)}; JS {fmt(js_ref[i])} vs reference; "
                f"threshold {fmt(thr[i])}"
            ),
            details={
                "top_classes": movers,
                "js_federation": json_num(js_fed[i]),
                "base_threshold": ctx.th.label_drift_js,
                "noise_mechanism": ctx.data.noise_mechanism[i],
                "noise_scale": json_num(ctx.data.noise_scale[i]),
                "streak_rounds": int(state.streak[ctx.idx[i]]),
            },
        )
