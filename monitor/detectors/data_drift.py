"""Data drift: labels *and* features of one client drifted in the same round.

A combining detector: it reads the label and feature drift detectors' steps
(``ctx.output("label_drift")``, ``ctx.output("feature_drift")``), so it must
come after both in the registry. It keeps the ``drift`` streak (label or
feature drift), which the ``FLClientDataDrift`` alert reads.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from monitor.detectors.base import (
    Detector,
    DetectorStateBase,
    FindingKind,
    RoundContext,
    Step,
    Streak,
    client_field,
)
from monitor.detectors.output import ActiveSignal, fmt
from monitor.signals import divergence

__all__ = ["DataDrift", "DataDriftState"]


@dataclass
class DataDriftState(DetectorStateBase):
    streak: np.ndarray = client_field(dtype=np.int64)
    """The ``drift`` streak: rounds with label or feature drift."""


class DataDrift(Detector):
    name = "data_drift"
    kinds = (
        FindingKind(
            "data_drift",
            "client",
            "Labels and features of the client both drifted from its reference rounds.",
            "client h-07: labels and features both drifted from its reference rounds "
            "(JS 0.41, max PSI 0.61); 2.10x threshold",
        ),
    )
    State = DataDriftState
    streaks = (Streak("drift", "label or feature drift"),)

    def step(self, ctx: RoundContext, state: DataDriftState) -> Step:
        label, feat = ctx.output("label_drift").values, ctx.output("feature_drift").values
        either = label["flag"] | feat["flag"]
        observed = label["ready"] | feat["ready"]
        state.streak[ctx.idx] = divergence.update_streak(state.streak[ctx.idx], either, observed)
        active = []
        for i in np.flatnonzero(label["flag"] & feat["flag"]):
            cid = ctx.ids[i]
            lr, fr = float(label["ratio"][i]), float(feat["ratio"][i])
            ratio = float(max(label["ratio"][i], feat["ratio"][i]))
            active.append(
                ActiveSignal(
                    kind="data_drift",
                    severity="critical",
                    client_id=cid,
                    score=ratio,
                    threshold=1.0,
                    message=(
                        f"client {cid}: labels and features both drifted from its reference rounds "
                        f"(JS {fmt(label['js'][i])}, max PSI {fmt(feat['psi_max'][i])}); "
                        f"{fmt(ratio)}x threshold"
                    ),
                    details={"label_ratio": lr, "feature_ratio": fr},
                )
            )
        return Step(
            client_scores={"drift_streak_rounds": state.streak[ctx.idx].astype(np.float64)},
            active=active,
        )
