"""Label noise: a client whose training loss rose against its own held-out loss.

Flipped or noisy *training* labels leave a client's label mix as it was when
the flip is a permutation or the noise is uniform over IID clients, so the
label and feature histograms show nothing, and the global model's loss on the
client's clean held-out split barely moves, so performance drift shows nothing
either. What does move is the loss the client reports for its own training:
it is measured against the corrupted labels. The log ratio of training to
held-out loss (:mod:`monitor.signals.loss_gap`) jumps from the client's usual
and stays there.

Per client and round (status ``ok``, both losses finite and > 0, at least
``label_noise_min_eval_examples`` held-out examples):

* ``g = ln(train_loss / eval_loss)`` and its move ``d`` from the client's own
  reference of ``g`` (made from its first reported round, then a bounded-step
  EWMA: :func:`monitor.signals.norm_reference.update_reference`), less the
  round's median move (at least 5 clients), so a change of the global model
  that moves every client's gap cancels;
* an upper CUSUM of ``d`` with allowance ``label_noise_allowance`` and alarm
  ``label_noise_alarm``: one clear round fires at onset, honest single spikes
  and jitter drain away;
* and, for a finding, the gap itself at least ``label_noise_min_gap_ratio``
  (training loss above held-out loss: what noisy labels do) and the move made
  by the training loss (its own move against the round's median client, at
  least ``label_noise_min_train_share`` of ``d``): a held-out loss that fell
  (the global model fits this client better after a big aggregate step) raises
  the gap too, but that is not the client's labels.

Rounds a client is flagged in do not teach its references (a noisy client
does not become its own usual); rounds whose global evaluation loss or
aggregate update is not finite are not judged and teach nothing (every
client's losses then say more about the model than about the client).
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
from monitor.detectors.inputs import EVIDENCE_MAX_ABS
from monitor.detectors.output import ActiveSignal, fmt, json_num, severity_for
from monitor.signals import changepoint, divergence, loss_gap
from monitor.signals.norm_reference import update_reference

__all__ = ["LabelNoise", "LabelNoiseThresholds", "LabelNoiseState"]


@dataclass(frozen=True)
class LabelNoiseThresholds:
    label_noise_allowance: float = threshold(
        0.25,
        "CUSUM allowance on the move of ln(train/eval loss) from the client's usual, less the "
        "round's median move: honest moves are below 0.12 in 99% of client-rounds and 0.2-0.3 "
        "in 0.1% (recorded grid), so they drain the evidence.",
    )
    label_noise_alarm: float = threshold(
        0.35,
        "CUSUM evidence that flags the client: one round moved by allowance + 0.35 = 0.6 (1.8x; "
        "most label_flip 1.0 / noisy_labels 0.8 onsets move 0.6-1.5) or two of 0.43 in a row.",
    )
    label_noise_evidence_cap: float = threshold(
        1.0,
        "The CUSUM evidence is capped here, so a client whose gap comes back is cleared within "
        "about (cap - alarm) / allowance + 1 = 4 rounds.",
    )
    label_noise_min_gap_ratio: float = threshold(
        1.2,
        "... and the training loss at least this multiple of the held-out loss this round: noisy "
        "labels make the training loss the larger (faulty clients after onset: 1.3-4.8x, 5th-90th "
        "percentile).",
    )
    label_noise_min_train_share: float = threshold(
        0.5,
        "... and the client's training loss (against the round's median client, from its own "
        "usual) moved by at least this share of the gap's move; faulty onsets: 0.83-1.9, honest "
        "clients over the alarm: 0.19 or less (their held-out loss fell).",
    )
    label_noise_min_eval_examples: int = threshold(
        5,
        "Clients with fewer held-out examples are not judged: a loss over 1-4 examples moves "
        "ln(train/eval) by 0.5-3 between rounds (0.1% of honest rounds), as much as label noise.",
    )
    label_noise_reference_rate: float = threshold(
        0.3,
        "EWMA weight of a round in the client's usual gap (after its first round); with the band "
        "it follows an honest client's slow drift (recorded grid: rate 0.2 gave 3x, 0.1 9x the "
        "false alarms of 0.3).",
    )
    label_noise_reference_band: float = threshold(
        1.22,
        "A round's step of the usual gap is clipped to ln(band) (1.22: 0.2), so at most "
        "rate x 0.2 = 0.06 a round: a sudden step is not learnt before it is judged (steps of "
        "0.12+ a round learnt slow-starting faults and missed 1-3 more on the recorded grid).",
    )


@dataclass
class LabelNoiseState(DetectorStateBase):
    """Per-client references (:func:`monitor.signals.norm_reference.update_reference`), evidence and streak."""

    gap_ref: np.ndarray = client_field(fill=np.nan)
    """The client's usual ln(train_loss / eval_loss) (NaN until its first judged round)."""
    train_ref: np.ndarray = client_field(fill=np.nan)
    """The client's usual log training loss against the round's median client."""
    evidence: np.ndarray = client_field()
    """Upper CUSUM of the gap's move (:func:`monitor.signals.loss_gap.cusum_high`)."""
    streak: np.ndarray = client_field(dtype=np.int64)


def _judged_round(ctx: RoundContext) -> bool:
    """False when the global evaluation loss or the aggregate update is reported and not finite (or huge)."""
    for v in (ctx.data.global_eval_loss, ctx.data.aggregate_update_norm):
        if v is not None and not (math.isfinite(v) and abs(v) < EVIDENCE_MAX_ABS):
            return False
    return True


class LabelNoise(Detector):
    """``values``: ``flag`` (label noise signalled), ``gap`` (ln train/eval loss), ``move``, ``evidence``."""

    name = "label_noise"
    kinds = (
        FindingKind(
            "label_noise",
            "client",
            "The client's training loss rose against its own held-out loss: its training labels "
            "no longer match its data.",
            "client c028: training loss 2.31x its held-out loss (usually 1.02x): its training "
            "labels no longer match its data (noisy or flipped labels?)",
        ),
    )
    Thresholds = LabelNoiseThresholds
    State = LabelNoiseState
    client_scores = (
        ClientScore(
            "train_eval_loss_log_ratio",
            "Log of the client's training loss over the global model's loss on its held-out split.",
            metric="fl_client_train_eval_loss_log_ratio",
        ),
        ClientScore(
            "label_noise_move",
            "Move of the client's log train/eval loss ratio from its own usual, less the round's "
            "median move.",
        ),
        ClientScore(
            "label_noise_evidence",
            "Upper CUSUM of the client's train/eval loss-ratio move (label noise at the alarm).",
            metric="fl_client_label_noise_evidence",
        ),
    )
    streaks = (Streak("label_noise", "training-loss rise against its held-out loss"),)
    flagged_counts = ("label_noise",)

    def step(self, ctx: RoundContext, state: LabelNoiseState) -> Step:
        th, idx, data = ctx.th, ctx.idx, ctx.data
        ee = np.asarray(data.eval_examples, dtype=np.float64)
        # NaN eval_examples: not reported, judged; a known small split is not
        usable = ctx.ok & ~data.nonfinite_loss & ~(ee < th.label_noise_min_eval_examples)
        gap = loss_gap.log_loss_gap(data.train_loss, data.eval_loss, usable)
        usable &= np.isfinite(gap)
        train = changepoint.relative_log_loss(data.train_loss, usable)  # usable: train loss > 0
        judged = _judged_round(ctx)

        gap_ref, train_ref = state.gap_ref[idx], state.train_ref[idx]
        move = loss_gap.centred_move(gap, gap_ref, np.isfinite(gap_ref))
        train_move = loss_gap.centred_move(train, train_ref, np.isfinite(train_ref))
        if not judged:
            move[:] = np.nan
        evidence = loss_gap.cusum_high(
            state.evidence[idx], move, th.label_noise_allowance, th.label_noise_evidence_cap
        )
        state.evidence[idx] = evidence
        shape_ok = (np.nan_to_num(gap, nan=-np.inf) >= math.log(th.label_noise_min_gap_ratio)) & (
            np.nan_to_num(train_move, nan=-np.inf)
            >= th.label_noise_min_train_share * np.nan_to_num(move, nan=np.inf)
        )
        observed = np.isfinite(move)
        flag = observed & (evidence >= th.label_noise_alarm) & shape_ok

        teach = usable & judged & ~flag
        rate, band = th.label_noise_reference_rate, th.label_noise_reference_band
        # one-round start: a reference is made once it is finite (no round count to keep)
        for name, ref, value in (("gap_ref", gap_ref, gap), ("train_ref", train_ref, train)):
            made = np.isfinite(ref).astype(np.int64)
            new, _ = update_reference(ref, made, value, teach, need=1, rate=rate, band=band)
            getattr(state, name)[idx] = new
        state.streak[idx] = divergence.update_streak(state.streak[idx], flag, observed)
        ctx.add_anomaly(np.where(shape_ok, evidence / th.label_noise_alarm, np.nan))

        active = []
        onset = th.label_noise_allowance + th.label_noise_alarm
        for i in np.flatnonzero(flag):
            cid, row = ctx.ids[i], idx[i]
            usual = math.exp(float(state.gap_ref[row]))
            active.append(
                ActiveSignal(
                    kind="label_noise",
                    severity=severity_for(float(move[i] / onset), th.critical_factor),
                    client_id=cid,
                    score=float(evidence[i]),
                    threshold=th.label_noise_alarm,
                    message=(
                        f"client {cid}: training loss {fmt(math.exp(gap[i]))}x its held-out loss "
                        f"(usually {fmt(usual)}x): its training labels no longer match its data "
                        "(noisy or flipped labels?)"
                    ),
                    details={
                        "train_loss": json_num(data.train_loss[i]),
                        "eval_loss": json_num(data.eval_loss[i]),
                        "log_gap": json_num(gap[i]),
                        "log_gap_reference": json_num(state.gap_ref[row]),
                        "move": json_num(move[i]),
                        "train_loss_move": json_num(train_move[i]),
                        "evidence": json_num(evidence[i]),
                        "streak_rounds": int(state.streak[row]),
                    },
                )
            )
        return Step(
            client_scores={
                "train_eval_loss_log_ratio": gap,
                "label_noise_move": move,
                "label_noise_evidence": np.where(observed, evidence, np.nan),
                "label_noise_streak_rounds": state.streak[idx].astype(np.float64),
            },
            round_scores={"clients_label_noise": float(flag.sum())},
            active=active,
            values={"flag": flag, "gap": gap, "move": move, "evidence": evidence},
        )
