"""Train/eval gap: a client whose training accuracy runs far ahead of its held-out accuracy.

A worked example of a detector (docs/extending.md); the test suite runs it
(tests/test_extending.py). Memorising a small local dataset, or training on
rows that do not look like the client's held-out rows, shows as a gap between
the accuracy a client reports on what it trained on and the global model's
accuracy on its local held-out data.
"""

from __future__ import annotations

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
from monitor.detectors.output import ActiveSignal, fmt, severity_for
from monitor.signals import divergence


@dataclass(frozen=True)
class TrainEvalGapThresholds:
    train_eval_gap_max: float = threshold(
        0.3, "Train accuracy minus eval accuracy beyond which a client over-fits."
    )
    train_eval_gap_min_rounds: int = threshold(
        2, "Consecutive rounds over the gap before the finding opens."
    )


@dataclass
class TrainEvalGapState(DetectorStateBase):
    LAYOUT = 1  # bump when the fields change; a stored state of another layout restarts fresh

    streak: np.ndarray = client_field(dtype=np.int64)


class TrainEvalGap(Detector):
    name = "train_eval_gap"
    kinds = (
        FindingKind(
            "train_eval_gap",
            "client",
            "The client's training accuracy runs far ahead of its held-out accuracy.",
            "client c003: train accuracy 99% vs eval 52% (gap 0.47) for 2 rounds; threshold 0.30",
        ),
    )
    Thresholds = TrainEvalGapThresholds
    State = TrainEvalGapState
    client_scores = (
        ClientScore(
            "train_eval_gap",
            "Client's train accuracy minus its eval accuracy of the global model.",
            metric="fl_client_train_eval_gap_ratio",
        ),
    )
    streaks = (Streak("train_eval_gap", "train/eval accuracy gap"),)

    def step(self, ctx: RoundContext, state: TrainEvalGapState) -> Step:
        th, data, idx = ctx.th, ctx.data, ctx.idx
        gap = np.where(ctx.ok, data.train_accuracy - data.eval_accuracy, np.nan)
        over = np.nan_to_num(gap, nan=0.0) > th.train_eval_gap_max
        state.streak[idx] = divergence.update_streak(state.streak[idx], over, np.isfinite(gap))
        fire = over & (state.streak[idx] >= th.train_eval_gap_min_rounds)
        ctx.add_anomaly(gap / th.train_eval_gap_max)  # its share of the combined anomaly score
        active = []
        for i in np.flatnonzero(fire):
            cid, rounds = ctx.ids[i], int(state.streak[idx[i]])
            active.append(
                ActiveSignal(
                    kind="train_eval_gap",
                    severity=severity_for(gap[i] / th.train_eval_gap_max, th.critical_factor),
                    client_id=cid,
                    score=float(gap[i]),
                    threshold=th.train_eval_gap_max,
                    message=(
                        f"client {cid}: train accuracy {data.train_accuracy[i]:.0%} vs eval "
                        f"{data.eval_accuracy[i]:.0%} (gap {fmt(gap[i])}) for {rounds} rounds; "
                        f"threshold {fmt(th.train_eval_gap_max)}"
                    ),
                    details={"streak_rounds": rounds},
                )
            )
        return Step(
            client_scores={
                "train_eval_gap": gap,
                "train_eval_gap_streak_rounds": state.streak[idx].astype(np.float64),
            },
            active=active,
        )
