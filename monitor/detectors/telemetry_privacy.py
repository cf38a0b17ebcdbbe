"""Telemetry privacy: each client's epsilon spent so far on its histograms, against the run's budget.

The accounting of :mod:`monitor.signals.telemetry_privacy`, with the same
accountant the clients calibrate with (Opacus' RDP analysis at sampling rate 1):
every analysed report that carries histograms is one release. Its RDP terms
come from the noise the report declares and from the sensitivity the service
derives from the report itself (``sqrt(2H)`` for its ``H`` histograms, one
record replaced); per client the state keeps two sums (Gaussian ``z^-2``,
pure-DP epsilon), which hold the whole history. Epsilon is taken at the run's
telemetry delta (1e-5 when the run declares no budget).

A client that sends histograms **without** declared noise (or with a zero
scale) has no protection: its epsilon is ``+Inf`` from then on, never 0. A
client that never sent a histogram has spent 0.

When the run declares a ``telemetry_budget``, a client whose epsilon exceeds
it gets a ``telemetry_budget_exceeded`` finding (critical when unprotected).
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
    RoundScore,
    Step,
    client_field,
)
from monitor.detectors.output import ActiveSignal, fmt
from monitor.signals import telemetry_privacy as tp

__all__ = ["TelemetryPrivacy", "TelemetryPrivacyState", "histograms_released"]

DEFAULT_DELTA = 1e-5


def histograms_released(label_hist: np.ndarray, feature_hists: list[np.ndarray]) -> np.ndarray:
    """Per client, how many histograms its report carried (rows that are not all NaN)."""
    h = np.isfinite(label_hist).any(axis=1).astype(np.int64) if label_hist.shape[1] else 0
    h = np.zeros(label_hist.shape[0], dtype=np.int64) + h
    for f in feature_hists:
        if f.shape[1]:
            h += np.isfinite(f).any(axis=1)
    return h


@dataclass
class TelemetryPrivacyState(DetectorStateBase):
    telemetry_inverse_square: np.ndarray = client_field(0.0)
    """Sum over the client's Gaussian releases of ``z^-2`` (``inf``: a release without noise)."""
    telemetry_pure_epsilon: np.ndarray = client_field(0.0)
    """Sum over its Laplace releases of ``2H / b`` (``inf``: a release without noise)."""
    telemetry_releases: np.ndarray = client_field(0, dtype=np.int64)
    telemetry_epsilon: np.ndarray = client_field(0.0)
    """Epsilon of the sums above at the run's delta (recomputed only for clients that release)."""


class TelemetryPrivacy(Detector):
    name = "telemetry_privacy"
    kinds = (
        FindingKind(
            "telemetry_budget_exceeded",
            "client",
            "A client's histograms have spent more privacy than the run's telemetry budget "
            "(or were sent without noise).",
            "client c004: telemetry epsilon 4.12 after 34 histogram releases exceeds the run's "
            "budget 3.00 (delta 1e-05)",
        ),
    )
    State = TelemetryPrivacyState
    client_scores = (
        ClientScore(
            "telemetry_epsilon",
            "Epsilon the client's histograms have spent so far (+Inf: sent without noise).",
            "fl_client_telemetry_epsilon",
        ),
        ClientScore("telemetry_releases", "Histogram releases of the client so far."),
    )
    round_scores = (
        RoundScore(
            "telemetry_epsilon_max",
            "Largest telemetry epsilon of any client so far (+Inf: a client sent histograms without noise).",
            "fl_run_telemetry_epsilon_max",
        ),
        RoundScore(
            "telemetry_budget_epsilon",
            "The telemetry epsilon the run allows each client (its declared budget).",
            "fl_run_telemetry_budget_epsilon",
        ),
        RoundScore(
            "telemetry_unprotected_clients",
            "Clients that have sent histograms without noise (no protection).",
            "fl_run_telemetry_unprotected_clients",
        ),
    )

    def step(self, ctx: RoundContext, state: TelemetryPrivacyState) -> Step:
        cfg, data, idx = ctx.cfg, ctx.data, ctx.idx
        delta = cfg.telemetry_delta or DEFAULT_DELTA
        h = np.where(ctx.ok, histograms_released(data.label_hist, data.feature_hists), 0)
        inv, pure = tp.release_terms(data.noise_mechanism, data.noise_scale, h)
        state.telemetry_inverse_square[idx] += inv
        state.telemetry_pure_epsilon[idx] += pure
        state.telemetry_releases[idx] += h > 0
        for row in idx[h > 0]:  # one accountant call per releasing client (cached by its sums)
            state.telemetry_epsilon[row] = tp.epsilon_from_rdp_terms(
                float(state.telemetry_inverse_square[row]),
                float(state.telemetry_pure_epsilon[row]),
                delta,
            )
        eps_all = state.telemetry_epsilon
        eps = eps_all[idx]
        unprotected = np.isinf(eps_all)
        budget = cfg.telemetry_epsilon
        rs = {
            "telemetry_epsilon_max": float(eps_all.max()) if eps_all.size else 0.0,
            "telemetry_budget_epsilon": math.nan if budget is None else float(budget),
            "telemetry_unprotected_clients": float(unprotected.sum()),
        }
        active = []
        if budget is not None:
            for i in np.flatnonzero(eps > budget * (1 + 1e-9)):
                active.append(self._signal(ctx, int(i), float(eps[i]), budget, delta, state))
        return Step(
            client_scores={
                "telemetry_epsilon": eps,
                "telemetry_releases": state.telemetry_releases[idx].astype(np.float64),
            },
            round_scores=rs,
            active=active,
        )

    @staticmethod
    def _signal(
        ctx: RoundContext,
        i: int,
        eps: float,
        budget: float,
        delta: float,
        state: TelemetryPrivacyState,
    ) -> ActiveSignal:
        cid = ctx.ids[i]
        releases = int(state.telemetry_releases[ctx.idx[i]])
        if math.isinf(eps):
            message = (
                f"client {cid}: sent histograms without noise (no protection); "
                f"the run's telemetry budget is epsilon {fmt(budget)} (delta {delta:g})"
            )
        else:
            message = (
                f"client {cid}: telemetry epsilon {fmt(eps)} after {releases} histogram releases "
                f"exceeds the run's budget {fmt(budget)} (delta {delta:g})"
            )
        return ActiveSignal(
            kind="telemetry_budget_exceeded",
            severity="critical" if math.isinf(eps) else "warning",
            client_id=cid,
            score=eps,
            threshold=budget,
            message=message,
            details={
                "epsilon": eps if math.isfinite(eps) else "Infinity",
                "releases": releases,
                "budget": budget,
                "delta": delta,
            },
        )
