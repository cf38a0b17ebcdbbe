"""Participation: dropouts, stragglers and a federation-wide participation drop.

* dropout: consecutive rounds a known client failed, dropped out or timed
  out, or (when every known client was expected) sent nothing;
* straggler: wall time far out within the round (robust z of its log), a
  material multiple of the round median, *and* a multiple of the client's own
  usual time (3x the median data is slow every round: the client, not a fault)
  or extreme in the round (so a client slow from its first round is reported);
* participation_drop: ok reports over expected (``num_sampled`` when the
  round close sent it, else the run's ``expected_clients``).

Under partial participation (``num_sampled`` below the run's
``expected_clients``, sampling rate ``q``) a client can only fail when it is
sampled, so its streak moves on those rounds alone; the streak it needs is
``max(1, ceil(dropout_streak_rounds * q))`` sampled failures, which keeps the
expected rounds to a finding about what they are under full participation. When
the server reports only the clients that answered, a client that stays absent
is a dropout once its absence is improbable under sampling alone:
``(1 - q)^n <= dropout_absence_p_value`` for ``n`` rounds since it last reported ok
(:func:`monitor.signals.participation.absence_p_value`).
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
    Streak,
    client_field,
    threshold,
)
from monitor.detectors.output import ActiveSignal, fmt, json_num, pct, severity_for
from monitor.signals import divergence, participation

__all__ = ["Participation", "ParticipationThresholds", "ParticipationState"]


@dataclass(frozen=True)
class ParticipationThresholds:
    participation_min_ratio: float = threshold(
        0.8, "Ok reports over expected clients below which participation dropped."
    )
    dropout_streak_rounds: int = threshold(
        2, "Consecutive missing/failed rounds before a client counts as dropped out."
    )
    dropout_absence_p_value: float = threshold(
        1e-4,
        "Partial participation, absent clients: chance of the absence under sampling alone "
        "at or below which the client dropped out.",
    )
    straggler_robust_z: float = threshold(
        3.5, "Robust z of log wall time within the round beyond which a client straggles."
    )
    straggler_min_ratio: float = threshold(
        3.0,
        "A straggler also takes at least this many times the round's median wall time "
        "(a client with twice the data takes twice as long; 2.0 flagged such healthy clients).",
    )
    straggler_min_own_ratio: float = threshold(
        3.0,
        "... and this many times the client's own smoothed wall time; healthy clients stay "
        "within 1.3x of it (speed and data are the client's), a straggler fault is ~11x.",
    )
    straggler_extreme_ratio: float = threshold(
        10.0,
        "... or, slow against itself or not, this many times the round's median: honest "
        "clients with 3x+ the median data reach 7.8x at 1,000 clients under label skew.",
    )


@dataclass
class ParticipationState(DetectorStateBase):
    straggler: np.ndarray = client_field(dtype=np.int64)
    dropout: np.ndarray = client_field(dtype=np.int64)
    """Streaks; ``dropout`` counts over every known client, present or not."""
    last_ok_round: np.ndarray = client_field(fill="round", dtype=np.int64)
    """The last round each client reported ok (its first round until it does)."""
    wall_ref: np.ndarray = client_field(fill=np.nan)  # smoothed log wall time, non-slow rounds


class Participation(Detector):
    name = "participation"
    kinds = (
        FindingKind(
            "dropout",
            "client",
            "A known client failed or sent nothing for several consecutive rounds.",
            "client c011: missing from 3 consecutive rounds (no report in round 14); last seen "
            "round 11",
        ),
        FindingKind(
            "straggler",
            "client",
            "The client took far longer than the round's other clients.",
            "client c005: round took 41.2 s, 10.9x the median 3.78 s (robust z 8.1; thresholds z "
            "3.5 and 3.0x)",
        ),
        FindingKind(
            "participation_drop",
            "federation",
            "Too few of the expected clients reported ok this round.",
            "round 12: 14 of 20 expected clients reported ok (70%; failed 0, dropped 6, timeout "
            "0); threshold 80%",
        ),
    )
    Thresholds = ParticipationThresholds
    calibrated = ("straggler_robust_z",)
    State = ParticipationState
    client_scores = (
        ClientScore(
            "wall_time_robust_z",
            "Robust z-score of the client's wall time within the round (high = straggler).",
            metric="fl_client_wall_time_robust_z",
        ),
        ClientScore("wall_time_ratio", "Client's wall time over the round's median wall time."),
    )
    round_scores = (
        RoundScore(
            "reports", "Client reports in the latest analysed round.", "fl_run_round_reports"
        ),
        RoundScore("reports_ok", "Reports with status ok."),
        RoundScore("reports_failed", "Reports with status failed."),
        RoundScore("reports_dropped", "Reports with status dropped."),
        RoundScore("reports_timeout", "Reports with status timeout."),
        RoundScore(
            "expected_clients",
            "Clients expected (sampled) in the latest analysed round.",
            "fl_run_round_expected_clients",
        ),
        RoundScore(
            "participation_ratio",
            "Clients that reported ok over clients expected in the latest round.",
            "fl_run_participation_ratio",
        ),
        RoundScore("reported_expected_ratio", "Reports of any status over clients expected."),
        RoundScore(
            "clients_known", "Distinct clients seen by the run so far.", "fl_run_clients_known"
        ),
        RoundScore(
            "clients_absent_counted",
            "Known clients without a report counted as missing this round.",
        ),
        RoundScore(
            "stragglers", "Straggling clients in the latest analysed round.", "fl_run_stragglers"
        ),
        RoundScore(
            "dropouts",
            "Clients counted as dropped out in the latest analysed round.",
            "fl_run_dropouts",
        ),
    )
    streaks = (
        Streak("straggler", "wall time (straggling)"),
        Streak("dropout", "failure or absence (dropout)"),
    )

    def step(self, ctx: RoundContext, state: ParticipationState) -> Step:
        th, ok, idx, data = ctx.th, ctx.ok, ctx.idx, ctx.data
        wall = data.wall_time_seconds
        wall_z = participation.straggler_z(wall, ok)
        wall_ratio = participation.wall_time_ratio(wall, ok)
        own = participation.own_time_ratio(wall, state.wall_ref[idx])
        lims = (th.straggler_robust_z, th.straggler_min_ratio)
        own_lims = (th.straggler_min_own_ratio, th.straggler_extreme_ratio)
        ev = participation.straggler_evidence(ok, wall_z, wall_ratio, own, lims, own_lims)
        straggler, slow_self, anomaly = ev
        state.wall_ref[idx] = participation.own_time_reference(
            state.wall_ref[idx], wall, ok & ~straggler & ~slow_self
        )
        ctx.collect("straggler_robust_z", wall_z[ctx.healthy])
        state.straggler[idx] = divergence.update_streak(state.straggler[idx], straggler, ok)
        # dropouts: explicit non-ok statuses, plus absent known clients when everyone was expected
        expected = data.num_sampled if data.num_sampled is not None else ctx.cfg.expected_clients
        k = ctx.num_clients
        failed_k, ok_k, absent_k = np.zeros(k, bool), np.zeros(k, bool), np.ones(k, bool)
        failed_k[idx[~ok]] = True
        ok_k[idx[ok]] = True
        absent_k[idx] = False
        count_absent = expected is not None and expected >= k
        if count_absent:
            failed_k |= absent_k
        state.dropout = participation.dropout_streaks(state.dropout, failed_k, ok_k)
        state.last_ok_round[idx[ok]] = ctx.round
        ctx.add_anomaly(anomaly)
        q = participation.sampling_rate(expected, ctx.cfg.expected_clients)
        need = (
            th.dropout_streak_rounds if q >= 1 else max(1, math.ceil(th.dropout_streak_rounds * q))
        )
        p_absent = participation.absence_p_value(ctx.round - state.last_ok_round, q)
        improbable = (
            absent_k & (q < 1) & (np.nan_to_num(p_absent, nan=1.0) <= th.dropout_absence_p_value)
        )
        drop_k = np.flatnonzero((state.dropout >= need) | improbable)
        active = [_straggler(ctx, i, wall_z, wall_ratio, own) for i in np.flatnonzero(straggler)]
        active += [_dropout(ctx, state, int(c), absent_k, need, q, p_absent) for c in drop_k]
        status = np.asarray(data.status, dtype=object)
        counts = participation.status_counts(status)
        part = participation.participation_ratio(counts["ok"], expected)
        rs = {
            "reports": float(ctx.n),
            **{f"reports_{s}": float(v) for s, v in counts.items()},
            "expected_clients": float(expected) if expected else math.nan,
            "participation_ratio": part,
            "reported_expected_ratio": participation.participation_ratio(ctx.n, expected),
            "clients_known": float(k),
            "clients_absent_counted": float(absent_k.sum()) if count_absent else 0.0,
            "stragglers": float(straggler.sum()),
            "dropouts": float(drop_k.size),
        }
        if math.isfinite(part) and part < th.participation_min_ratio:
            active.append(_participation_drop(ctx, part, expected, counts))
        return Step(
            client_scores={
                "wall_time_robust_z": wall_z,
                "wall_time_ratio": wall_ratio,
                "straggler_streak_rounds": state.straggler[idx].astype(np.float64),
                "dropout_streak_rounds": state.dropout[idx].astype(np.float64),
            },
            round_scores=rs,
            active=active,
        )


def _straggler(ctx: RoundContext, i: int, z: np.ndarray, ratio, own: np.ndarray) -> ActiveSignal:
    th, cid, wall = ctx.th, ctx.ids[i], ctx.data.wall_time_seconds
    med = float(np.nanmedian(np.where(ctx.ok, wall, np.nan)))
    return ActiveSignal(
        kind="straggler",
        severity="info",
        client_id=cid,
        score=float(z[i]),
        threshold=th.straggler_robust_z,
        message=(
            f"client {cid}: round took {wall[i]:.3g} s, {fmt(ratio[i], 1)}x "
            f"the median {med:.3g} s (robust z {fmt(z[i], 1)}; thresholds z "
            f"{fmt(th.straggler_robust_z, 1)} and {fmt(th.straggler_min_ratio, 1)}x)"
            + (f"; {fmt(own[i], 1)}x its own usual time" if np.isfinite(own[i]) else "")
        ),
        details={
            "wall_time_seconds": json_num(wall[i]),
            "median_seconds": json_num(med),
            "ratio_to_median": json_num(ratio[i]),
            "ratio_to_own": json_num(own[i]),
        },
    )


def _dropout(
    ctx: RoundContext,
    state: ParticipationState,
    k: int,
    absent: np.ndarray,
    need: int,
    q: float,
    p_absent: np.ndarray,
) -> ActiveSignal:
    th, rnd = ctx.th, ctx.round
    cid, streak = str(ctx.client_ids[k]), int(state.dropout[k])
    present = not absent[k]
    status = np.asarray(ctx.data.status, dtype=object)
    what = f"status {status[np.flatnonzero(ctx.idx == k)[0]]}" if present else "no report"
    last = int(ctx.last_seen_round[k]) if not present else rnd
    if streak >= need:
        sampled = "" if q >= 1 else f" it was sampled in ({pct(q)} of clients sampled per round)"
        return ActiveSignal(
            kind="dropout",
            severity=severity_for(streak / need, th.critical_factor),
            client_id=cid,
            score=float(streak),
            threshold=float(need),
            message=(
                f"client {cid}: failed or missing in {streak} consecutive rounds{sampled} "
                f"({what} in round {rnd}); last seen round {last}"
            ),
            details={"streak_rounds": streak, "reported": present, "sampling_rate": q},
        )
    unseen = rnd - int(state.last_ok_round[k])
    return ActiveSignal(
        kind="dropout",
        severity="warning",
        client_id=cid,
        score=float(p_absent[k]),
        threshold=th.dropout_absence_p_value,
        message=(
            f"client {cid}: no ok report for {unseen} rounds (last round {int(state.last_ok_round[k])}); "
            f"with {pct(q)} of clients sampled per round that happens by chance with "
            f"probability {float(p_absent[k]):.1e}"
        ),
        details={"rounds_unseen": unseen, "reported": False, "sampling_rate": q},
    )


def _participation_drop(
    ctx: RoundContext, part: float, expected: int | None, counts: dict[str, int]
) -> ActiveSignal:
    th = ctx.th
    return ActiveSignal(
        kind="participation_drop",
        severity=severity_for(th.participation_min_ratio / max(part, 1e-9), th.critical_factor),
        client_id=None,
        score=part,
        threshold=th.participation_min_ratio,
        message=(
            f"round {ctx.round}: {counts['ok']} of {expected} expected clients reported ok "
            f"({pct(part)}; failed {counts['failed']}, dropped {counts['dropped']}, "
            f"timeout {counts['timeout']}); threshold {pct(th.participation_min_ratio)}"
        ),
        details={"reported_ok": counts["ok"], "expected": expected, **counts},
    )
