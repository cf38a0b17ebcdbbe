"""Divergence with memory: evidence against a client's update that accumulates over rounds.

One round cannot separate a Byzantine update from an honest one in a non-IID
federation: honest clients' cosines to the aggregate already spread from about
-0.6 to 0.5 (label skew alpha 0.1), so a sign-flipped or noise update sits inside
that spread. What the attacker cannot hide is that *its* update stopped looking
like *its own* earlier ones. Four pieces of evidence, each judged against the
client's own reference (its first ``divergence_reference_rounds`` usable rounds)
and the round (robust statistics over the other clients), never against an
aggregate that contains the client itself:

* **cosine drop** - the cosine of the client's sketch to the leave-one-out mean of
  the other clients' sketches (:func:`monitor.signals.divergence.leave_one_out_cosine`),
  minus its own reference mean of it, in Fisher z (``fisher_z``), less the drop of
  clients of like reference place (``place_residual``: a Theil-Sen line of drop on
  place), as a robust z in the round, fed to a lower CUSUM (``cusum_low``, allowance
  ``k``, alarm ``h``; a round counts only where that residual is at least
  ``divergence_cosine_min_drop``): a client far below its usual place round after
  round builds evidence, one whose low cosine is normal for its data does not. At
  200-1,000 healthy clients places move together *by place* (alpha 0.1: those nearest
  the early majority fall back; IID: the noisiest lose most cosine, not most z); under
  ``divergence_place_min_clients`` (a line through 20-50 is noise) the round's median.
  The allowance is 2.5: when attackers (or a drifting client) move the
  aggregate, honest clients' places shift by 1.5-2.5 robust z for a few rounds;
* **direction change** - the client's cosine to its own previous update against its
  reference mean of it, less the round's median change and a margin, in a CUSUM:
  honest consecutive updates of one client point alike (its data does not
  change); random-noise updates do not. The margin grows with the client's own
  usual size of change (``direction_change_spread_factor`` x its bounded-step
  EWMA on rounds without evidence): some honest clients' updates part a lot,
  round after round, and a fixed margin flags them or misses a steady client
  whose update turns to noise at once. A round counts only where the client's
  leave-one-out cosine also fell (``direction_change_min_loo_drop`` beyond the
  round's median drop): an honest client's consecutive updates part now and then
  (little data, its own optimum reached) while it keeps its place among the
  others, and a noise update leaves both;
* **sign reversal** - the cosine to its own previous update at or below
  ``update_reversal_cosine`` (-0.5) *and* at least ``update_reversal_min_change``
  below its reference (beyond the round's median change): an update that turned
  round from one round to the next where the client's updates used to agree (a
  sign flip starts; honest clients stay above -0.3 in the benchmark), against
  the reference the client has so far (:func:`monitor.signals.divergence.partial_reference`:
  under partial participation it may have none by the onset);
* **colluding** - the same update (sketch cosine >= ``stale_cosine_min``, same norm)
  as another client this round (:func:`monitor.signals.divergence.identical_updates`):
  attacks that craft one vector for several clients (ALIE, IPM) send it from all.

Stale, free-riding, non-finite updates have their own rules. See docs/signals.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from monitor.detectors.base import ClientScore, DetectorStateBase, client_field, threshold
from monitor.signals import divergence, norm_reference

__all__ = [
    "MemoryThresholds",
    "MemoryState",
    "MemoryRound",
    "memory_round",
    "PATTERNS",
    "MEMORY_CLIENT_SCORES",
    "memory_step",
    "memory_scores",
]


@dataclass(frozen=True)
class MemoryThresholds:
    """The divergence memory's thresholds (part of the update-anomalies detector's)."""

    divergence_reference_rounds: int = threshold(
        3, "Usable rounds of a client's own updates its divergence memory is referenced on."
    )
    divergence_cusum_allowance: float = threshold(
        2.5,
        "CUSUM allowance k of the leave-one-out cosine drop (robust z): rounds above -k drain "
        "the evidence.",
    )
    divergence_cosine_min_drop: float = threshold(
        0.1,
        "Cosine-drop evidence needs the leave-one-out cosine to fall this much more than "
        "the round's (or, in Fisher z, than like-place clients').",
    )
    divergence_place_min_clients: int = threshold(
        100, "Judged clients from which a cosine drop is judged against clients of like place."
    )
    divergence_cusum_threshold: float = threshold(
        5.0, "Accumulated cosine-drop evidence (robust z units) at which an update diverges."
    )
    direction_change_margin: float = threshold(
        0.4,
        "Drop of the cosine to the client's own previous update, beyond its reference and "
        "the round's median drop, that counts as evidence (plus the client's own spread "
        "times direction_change_spread_factor).",
    )
    direction_change_spread_factor: float = threshold(
        1.0,
        "Multiple of the client's own usual size of direction change (learnt on rounds "
        "without evidence) added to the margin: a client whose updates always part a lot "
        "needs a larger change.",
    )
    direction_change_threshold: float = threshold(
        0.5, "Accumulated direction-change evidence (cosine units) at which an update diverges."
    )
    direction_change_min_loo_drop: float = threshold(
        0.05, "Direction-change evidence needs the leave-one-out cosine to fall this much more too."
    )
    update_reversal_cosine: float = threshold(
        -0.5, "Cosine to the client's own previous update at or below which it turned round..."
    )
    update_reversal_min_change: float = threshold(
        1.0, "... when that is also this far below the client's reference cosine to its previous."
    )


@dataclass
class MemoryState(DetectorStateBase):
    """The divergence memory's per-client state (part of the update-anomalies detector's)."""

    loo_ref_sum: np.ndarray = client_field()
    loo_ref_n: np.ndarray = client_field(dtype=np.int64)
    prev_ref_sum: np.ndarray = client_field()
    prev_ref_n: np.ndarray = client_field(dtype=np.int64)
    cosine_evidence: np.ndarray = client_field()
    direction_evidence: np.ndarray = client_field()
    """Reference sums/counts of the leave-one-out and previous cosines; CUSUM evidence."""
    # additive (no LAYOUT bump): a state stored before it reads as no spread learnt yet
    direction_spread: np.ndarray = client_field(fill=np.nan)
    """The client's usual size of direction change (NaN until its first quiet round)."""


SPREAD_RATE, SPREAD_BAND = 0.2, float(np.exp(0.1))
"""The client's usual size of direction change (:func:`norm_reference.update_reference`, need 1):
EWMA rate, and a step bound of ln(band) = 0.1 (cosine units); rates 0.1-0.2, bounds 0.05-0.1 agreed."""

PATTERNS = ("colluding", "sign_reversal", "direction_change", "cosine_drop")
"""Evidence names, strongest first (a finding names the first that holds)."""


@dataclass
class MemoryRound:
    """This round's memory evidence (arrays over the round's clients)."""

    loo_cosine: np.ndarray
    cosine_evidence: np.ndarray
    direction_evidence: np.ndarray
    identical: np.ndarray
    reversal: np.ndarray
    flag: np.ndarray
    pattern: list[str | None]


def _reference(
    total: np.ndarray,
    count: np.ndarray,
    idx: np.ndarray,
    value: np.ndarray,
    use: np.ndarray,
    need: int,
) -> np.ndarray:
    """The mean of each client's first ``need`` usable values (NaN until it has them).

    ``total``/``count`` are the state's per-client arrays (rows ``idx``), grown in place.
    """
    tot, cnt = total[idx], count[idx]
    base = np.where(cnt >= need, tot / np.maximum(cnt, 1), np.nan)
    grow = use & np.isfinite(value) & (cnt < need)
    total[idx[grow]] += value[grow]
    count[idx[grow]] += 1
    return base


def memory_round(
    *,
    sketch: np.ndarray,
    norm: np.ndarray,
    weights: np.ndarray,
    cos_prev: np.ndarray,
    judged: np.ndarray,
    idx: np.ndarray,
    state: Any,
    th: Any,
    suspect: np.ndarray | None = None,
) -> MemoryRound:
    """Evidence for this round; updates the per-client memory fields of ``state`` in place.

    ``judged``: clients whose update is judged here (ok, finite, neither stale nor
    free-riding). ``state`` carries ``loo_ref_sum``/``loo_ref_n``,
    ``prev_ref_sum``/``prev_ref_n``, ``cosine_evidence``, ``direction_evidence``,
    ``direction_spread``. ``suspect``: clients already found this round (their training
    labels look corrupted): judged as any other, but left out of the others' mean that
    everyone's leave-one-out cosine is taken to, so that a fault already found does not
    drag the honest clients' places.
    """
    need = int(th.divergence_reference_rounds)
    contributes = None if suspect is None else ~np.asarray(suspect, dtype=bool)
    if contributes is not None and (judged & contributes).sum() < 2:
        contributes = None  # everyone under suspicion: the plain leave-one-out mean
    loo = divergence.leave_one_out_cosine(sketch, weights, judged, contributes)
    base_loo = _reference(state.loo_ref_sum, state.loo_ref_n, idx, loo, judged, need)
    drop = loo - base_loo
    judged_drop = judged & np.isfinite(drop)
    resid = drop - (np.median(drop[judged_drop]) if judged_drop.any() else 0.0)
    if judged_drop.sum() >= th.divergence_place_min_clients:  # against clients of like place
        place = divergence.fisher_z(base_loo)
        resid = divergence.place_residual(divergence.fisher_z(loo) - place, place, judged_drop)
    z = divergence.robust_z(resid, judged_drop)
    beyond = np.zeros(len(loo))
    if judged_drop.sum() >= 5:
        # a robust z over a tiny spread is not an effect: the drop must also be material
        beyond = np.nan_to_num(resid, nan=0.0)
        z = np.where(beyond <= -th.divergence_cosine_min_drop, z, 0.0)
        z = np.where(judged_drop, z, np.nan)
    ev_c = divergence.cusum_low(
        state.cosine_evidence[idx], z, th.divergence_cusum_allowance, judged
    )
    state.cosine_evidence[idx] = ev_c
    ref_rev = divergence.partial_reference(
        state.prev_ref_sum[idx], state.prev_ref_n[idx], cos_prev, judged & np.isfinite(cos_prev)
    )
    base_prev = _reference(state.prev_ref_sum, state.prev_ref_n, idx, cos_prev, judged, need)
    change = base_prev - cos_prev
    ok_change = judged & np.isfinite(change)
    med = float(np.median(change[ok_change])) if ok_change.sum() >= 5 else 0.0
    spread = np.nan_to_num(state.direction_spread[idx], nan=0.0)
    margin = th.direction_change_margin + th.direction_change_spread_factor * spread
    step = change - med - margin
    # an honest client's consecutive updates may part (small data, its optimum reached) while
    # it keeps its place among the others; a noise update leaves both: both must move
    step = np.where(beyond <= -th.direction_change_min_loo_drop, step, np.minimum(step, 0.0))
    ev_d = state.direction_evidence[idx]
    ev_d = np.where(ok_change, np.maximum(0.0, ev_d + np.nan_to_num(step)), ev_d)
    state.direction_evidence[idx] = ev_d
    # quiet rounds teach the usual size of change (an attack held under the gate: +0.02 a round)
    quiet = ok_change & (ev_d <= th.direction_change_threshold) & (np.nan_to_num(step) <= 0)
    learnt = state.direction_spread[idx]
    state.direction_spread[idx], _ = norm_reference.update_reference(
        learnt, np.isfinite(learnt).astype(np.int64), np.abs(change - med), quiet,
        need=1, rate=SPREAD_RATE, band=SPREAD_BAND,
    )  # fmt: skip
    turned = ref_rev - cos_prev - med
    reversal = (
        judged
        & np.isfinite(turned)
        & (np.nan_to_num(cos_prev, nan=1.0) <= th.update_reversal_cosine)
        & (np.nan_to_num(turned, nan=0.0) >= th.update_reversal_min_change)
    )
    identical = divergence.identical_updates(
        sketch, norm, judged, th.stale_cosine_min, th.stale_norm_rtol
    )
    colluding = judged & (identical >= 1)
    by = {
        "colluding": colluding,
        "sign_reversal": reversal,
        "direction_change": judged & (ev_d > th.direction_change_threshold),
        "cosine_drop": judged & (ev_c > th.divergence_cusum_threshold),
    }
    flag = np.zeros(len(loo), dtype=bool)
    pattern: list[str | None] = [None] * len(loo)
    for name in PATTERNS:
        for i in np.flatnonzero(by[name] & ~flag):
            pattern[i] = name
        flag |= by[name]
    return MemoryRound(loo, ev_c, ev_d, identical, reversal, flag, pattern)


MEMORY_CLIENT_SCORES = (
    ClientScore(
        "update_cosine_leave_one_out",
        "Cosine between the client's sketch and the mean of the other clients' sketches.",
    ),
    ClientScore(
        "update_divergence_evidence",
        "Divergence memory: the client's accumulated evidence over its threshold (1 = at it).",
        metric="fl_client_update_divergence_evidence_ratio",
    ),
)


def memory_step(ctx: Any, state: Any, u: Any, judged: np.ndarray) -> MemoryRound:
    """:func:`memory_round` on the update-anomalies detector's round (``u``: its UpdateRound).

    The suspects are the clients the label-noise detector flags this round, when it runs
    (it comes earlier in the registry): updates trained on flipped or noisy labels are the
    ones that drag the others' mean. Clients flagged by update divergence itself are not
    left out: that set changes from round to round, and each change moves every client's
    reference (healthy 1,000 clients at alpha 0.1: 24 -> 90 false alarms when they were).
    """
    suspect = None
    noise = ctx.outputs.get("label_noise")
    if noise is not None and "flag" in noise.values:
        suspect = np.asarray(noise.values["flag"], dtype=bool)
    return memory_round(
        sketch=u.sketch,
        norm=u.norm_src,
        weights=np.asarray(ctx.data.num_examples, dtype=np.float64),
        cos_prev=u.cos_prev,
        judged=judged,
        idx=ctx.idx,
        state=state,
        th=ctx.th,
        suspect=suspect,
    )


def memory_scores(mem: MemoryRound, th: Any) -> dict[str, np.ndarray]:
    """The memory's client scores (:data:`MEMORY_CLIENT_SCORES`)."""
    return {
        "update_cosine_leave_one_out": mem.loo_cosine,
        "update_divergence_evidence": np.fmax(
            mem.cosine_evidence / th.divergence_cusum_threshold,
            mem.direction_evidence / th.direction_change_threshold,
        ),
    }
