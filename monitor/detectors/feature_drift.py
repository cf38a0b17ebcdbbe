"""Feature drift: each feature's histogram against the client's reference rounds (PSI, W1, KS).

Per feature the three statistics are each divided by their threshold plus
their noise floor (the ``1 - drift_null_alpha`` quantile under sampling and
declared local-DP noise); a client drifts when the largest of these ratios over
its features exceeds 1. The feature that moved most is named
(docs/signals.md, "Feature drift"). References are built as label drift's
(:mod:`monitor.detectors.label_drift`): judged from ``reference_min_rounds`` on, and
a drifted round does not join its own reference.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
from monitor.detectors.output import ActiveSignal, fmt, json_num, severity_for
from monitor.signals import divergence, drift

__all__ = ["FeatureDrift", "FeatureDriftThresholds", "FeatureDriftState"]

_CALIBRATED = ("feature_drift_psi", "feature_drift_wasserstein", "feature_drift_ks")


@dataclass(frozen=True)
class FeatureDriftThresholds:
    feature_drift_psi: float = threshold(0.25, "Population stability index beyond the noise floor.")
    feature_drift_wasserstein: float = threshold(
        0.20, "Wasserstein-1 in reference standard deviations beyond the noise floor."
    )
    feature_drift_ks: float = threshold(
        0.20, "Kolmogorov-Smirnov distance of the binned CDFs beyond the noise floor."
    )
    drift_null_alpha: float = threshold(
        1e-3, "Per-statistic false-alarm level of the noise floor added to drift thresholds."
    )


@dataclass
class FeatureDriftState(DetectorStateBase):
    PER_CLIENT_LISTS = ("ref_feature_counts",)

    ref_feature_counts: list[np.ndarray] = field(default_factory=list)
    """One ``(clients, bins_f)`` array per feature."""
    ref_feature_rounds: np.ndarray = client_field(dtype=np.int64)
    ref_feature_noise_var: np.ndarray = client_field()
    streak: np.ndarray = client_field(dtype=np.int64)

    @classmethod
    def fresh(cls, cfg: Any, num_clients: int) -> FeatureDriftState:
        nf = len(cfg.feature_bin_edges)
        out = cls(
            ref_feature_counts=[np.zeros((0, len(e) - 1)) for e in cfg.feature_bin_edges],
            ref_feature_rounds=np.zeros((0, nf), dtype=np.int64),
            ref_feature_noise_var=np.zeros((0, nf)),
        )
        out.grow(num_clients, 0)
        return out


@dataclass
class _Feature:
    """One feature's statistics this round (NaN where the client's reference is not ready)."""

    psi: np.ndarray
    w: np.ndarray
    ks: np.ndarray
    ratio: np.ndarray
    ready: np.ndarray
    hist: np.ndarray
    """This round's (denoised) histograms of the feature."""
    growing: np.ndarray
    """Clients whose reference of this feature is still short of ``reference_rounds``."""


class FeatureDrift(Detector):
    """Per client: the largest noise-adjusted drift ratio over its features.

    ``values``: ``flag``, ``ready`` (any feature's reference complete),
    ``ratio`` (max over features), ``psi_max``.
    """

    name = "feature_drift"
    kinds = (
        FindingKind(
            "feature_drift",
            "client",
            "A feature's distribution on the client moved away from its reference rounds.",
            "client b-03: feature 'age' moved most since round 12; PSI 0.61, Wasserstein 0.48 std, "
            "KS 0.27; 2.10x its noise-adjusted threshold (PSI 0.25, W 0.2, KS 0.2)",
        ),
    )
    Thresholds = FeatureDriftThresholds
    calibrated = _CALIBRATED
    State = FeatureDriftState
    client_scores = (
        ClientScore(
            "feature_drift_psi_max",
            "Largest population stability index over the client's features, against its "
            "reference rounds.",
            metric="fl_client_feature_drift_psi",
            quantile="fl_run_client_feature_drift_psi_quantile",
            quantile_what="client max feature PSI",
        ),
        ClientScore(
            "feature_drift_wasserstein_max",
            "Largest Wasserstein-1 distance over the client's features, in reference standard "
            "deviations.",
            metric="fl_client_feature_drift_wasserstein",
        ),
        ClientScore(
            "feature_drift_ks_max", "Largest binned Kolmogorov-Smirnov distance over the features."
        ),
        ClientScore(
            "feature_drift_ratio",
            "Client's feature drift over its threshold (>= 1 is drift).",
            metric="fl_client_feature_drift_threshold_ratio",
        ),
        ClientScore(
            "feature_drift_top_feature", "Index of the feature with the largest drift ratio."
        ),
    )
    streaks = (Streak("feature_drift", "feature distribution drift"),)
    flagged_counts = ("feature_drift",)

    def _feature(
        self, ctx: RoundContext, state: FeatureDriftState, f: int, cal: dict[str, np.ndarray]
    ) -> _Feature:
        """One feature: statistics, noise floors, calibration maxima (the reference grows in step)."""
        th, n, idx, edges = ctx.th, ctx.n, ctx.idx, ctx.cfg.feature_bin_edges[f]
        fh = drift.denoise(ctx.data.feature_hists[f])
        _, tot = drift.normalize_rows(fh)
        has = ctx.ok & np.isfinite(tot)
        rr = state.ref_feature_rounds[idx, f]
        rdy = has & (rr >= max(1, th.reference_min_rounds))
        grow = has & (rr < th.reference_rounds)
        out = _Feature(nan_array(n), nan_array(n), nan_array(n), nan_array(n), rdy, fh, grow)
        if rdy.any():
            r, cur = state.ref_feature_counts[f][idx][rdy], fh[rdy]
            n_ref, n_cur = r.sum(axis=1), tot[rdy]
            m = (r + 0.5) / (n_ref + 0.5 * r.shape[1])[:, None]
            v_cur, v_ref = ctx.noise_var[rdy], state.ref_feature_noise_var[idx, f][rdy]
            scale = drift.hist_std(r, edges)
            a = th.drift_null_alpha
            out.psi[rdy] = drift.psi(r, cur, drift.psi_smoothing(n_cur, n_ref, v_cur, v_ref))
            out.w[rdy] = drift.wasserstein_hist(r, cur, edges, scale)
            out.ks[rdy] = drift.ks_hist(r, cur)
            q_psi = drift.psi_null_quantile(m, n_cur, n_ref, v_cur, v_ref, a)
            q_w = drift.wasserstein_null_quantile(m, n_cur, n_ref, v_cur, v_ref, edges, scale, a)
            q_ks = drift.ks_null_quantile(m, n_cur, n_ref, v_cur, v_ref, a)
            out.ratio[rdy] = np.maximum.reduce(
                [
                    out.psi[rdy] / (th.feature_drift_psi + q_psi),
                    out.w[rdy] / (th.feature_drift_wasserstein + q_w),
                    out.ks[rdy] / (th.feature_drift_ks + q_ks),
                ]
            )
            for name, stat, q in zip(
                _CALIBRATED, (out.psi, out.w, out.ks), (q_psi, q_w, q_ks), strict=True
            ):
                cal[name][rdy] = np.maximum(cal[name][rdy], stat[rdy] - q)
        return out

    @staticmethod
    def _grow_references(
        ctx: RoundContext, state: FeatureDriftState, per: list[_Feature], flag: np.ndarray
    ) -> None:
        """Add this round to the references still growing, unless the client drifted (label_drift
        explains why a drifted round must not join its own reference)."""
        for f, ft in enumerate(per):
            bld = ft.growing & ~flag
            if bld.any():
                bi = ctx.idx[bld]
                state.ref_feature_counts[f][bi] += ft.hist[bld]
                state.ref_feature_rounds[bi, f] += 1
                state.ref_feature_noise_var[bi, f] += ctx.noise_var[bld]

    def step(self, ctx: RoundContext, state: FeatureDriftState) -> Step:
        n = ctx.n
        psi_max, w_max, ks_max, ratio = nan_array(n), nan_array(n), nan_array(n), nan_array(n)
        top = np.full(n, -1, dtype=np.int64)
        cal = {k: np.full(n, -np.inf) for k in _CALIBRATED}
        ready = np.zeros(n, dtype=bool)
        per: list[_Feature] = []
        for f in range(len(ctx.cfg.feature_bin_edges)):
            ft = self._feature(ctx, state, f, cal)
            if ft.ready.any():
                ready |= ft.ready
                better = np.nan_to_num(ft.ratio, nan=-np.inf) > np.nan_to_num(ratio, nan=-np.inf)
                top = np.where(better, f, top)
                ratio = np.fmax(ratio, ft.ratio)
            psi_max, w_max, ks_max = (
                np.fmax(psi_max, ft.psi),
                np.fmax(w_max, ft.w),
                np.fmax(ks_max, ft.ks),
            )
            per.append(ft)
        if ctx.calibrating:
            for k, v in cal.items():
                ctx.collect(k, v[ready & ctx.healthy])
        flag = ready & (np.nan_to_num(ratio, nan=0.0) > 1.0)
        self._grow_references(ctx, state, per, flag)
        state.streak[ctx.idx] = divergence.update_streak(state.streak[ctx.idx], flag, ready)
        ctx.add_anomaly(ratio)
        active = [
            self._signal(ctx, state, i, int(top[i]), per, ratio) for i in np.flatnonzero(flag)
        ]
        return Step(
            client_scores={
                "feature_drift_psi_max": psi_max,
                "feature_drift_wasserstein_max": w_max,
                "feature_drift_ks_max": ks_max,
                "feature_drift_ratio": ratio,
                "feature_drift_top_feature": np.where(top >= 0, top, np.nan).astype(np.float64),
                "feature_drift_streak_rounds": state.streak[ctx.idx].astype(np.float64),
            },
            round_scores={"clients_feature_drift": float(flag.sum())},
            active=active,
            values={"flag": flag, "ready": ready, "ratio": ratio, "psi_max": psi_max},
        )

    def _signal(
        self,
        ctx: RoundContext,
        state: FeatureDriftState,
        i: int,
        f: int,
        per: list[_Feature],
        ratio_all: np.ndarray,
    ) -> ActiveSignal:
        cfg, th, cid = ctx.cfg, ctx.th, ctx.ids[i]
        names = cfg.feature_names

        def label(g: int) -> str:
            return names[g] if g < len(names) else str(g)

        fname = names[f] if f < len(names) else f"feature {f}"
        top = sorted(
            (
                {
                    "feature": label(g),
                    "psi": json_num(per[g].psi[i]),
                    "wasserstein_std": json_num(per[g].w[i]),
                    "ks": json_num(per[g].ks[i]),
                }
                for g in range(len(per))
            ),
            key=lambda d: -(d["psi"] or 0.0),
        )[:3]
        ratio = float(ratio_all[i])
        return ActiveSignal(
            kind="feature_drift",
            severity=severity_for(ratio, th.critical_factor),
            client_id=cid,
            score=ratio,
            threshold=1.0,
            message=(
                f"client {cid}: feature '{fname}' moved most since round {ctx.since(state.streak, i)}; "
                f"PSI {fmt(per[f].psi[i])}, Wasserstein {fmt(per[f].w[i])} std, "
                f"KS {fmt(per[f].ks[i])}; {fmt(ratio)}x its noise-adjusted threshold "
                f"(PSI {th.feature_drift_psi}, W {th.feature_drift_wasserstein}, KS {th.feature_drift_ks})"
            ),
            details={"top_features": top, "streak_rounds": int(state.streak[ctx.idx[i]])},
        )
