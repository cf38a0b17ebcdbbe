"""One finding for one cause: runs after every other detector and rewrites the round's signals.

* **A federation-wide change is one finding.** When at least
  ``federation_drift_min_share`` of the clients whose features were judged this
  round (and at least ``federation_drift_min_clients``) drift, their per-client
  ``feature_drift`` / ``data_drift`` signals are replaced by one ``federation_drift``
  signal that lists the clients and the features that moved most (a new pipeline
  or firmware everywhere is one change, not thirty alerts).
* **While that change is open, what follows from it belongs to it.** The
  detector remembers the change and its member clients (its state) until a
  round in which none of the judged clients drifts any more. Until then:

  - any client's ``feature_drift`` / ``data_drift`` joins it (the client is a
    member from then on), even in rounds where fewer than the share drift (a
    partial round, clients whose reference only just became ready): the
    ``federation_drift`` signal goes on, so it stays one open finding;
  - the members' ``performance_drift`` (their loss under the global model moved
    because their data did), ``label_noise`` (their two splits' features moved
    by different amounts) and memory-based ``update_divergence`` (direction
    change, cosine drop: their updates moved against their own history because
    their data did) are absorbed and named in ``details.caused`` (per kind, the
    clients, over the whole change), unless the member's update is unusual
    *within* the round as well;
  - a federation-level ``fairness_regression`` or ``global_divergence`` that no
    client finding explains is absorbed too (``details.federation_kinds``).

  What it does not explain is kept: a client that stands out *within* the round
  (sign-flipped, noisy, stale or non-finite updates, free riders, dropouts,
  stragglers) stands out against clients whose data moved as much.
* **A consequence names its cause and does not page.** A federation-level signal
  that open client-level signals explain carries ``details.caused_by`` (the
  clients) and severity ``info``; the exporter leaves it out of
  ``fl_run_signal_streak_rounds``, so no alert rule fires on it:

  - ``fairness_regression``: flagged clients among this round's worst decile;
  - ``global_divergence``, ``nonfinite_aggregate``, ``global_stagnation``:
    clients flagged for their updates (divergent, non-finite, stale, free-riding);
  - ``participation_drop``: clients flagged as dropped out.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from monitor.detectors.base import (
    Detector,
    DetectorStateBase,
    FindingKind,
    RoundContext,
    RoundScore,
    Step,
    client_field,
    threshold,
)
from monitor.detectors.output import ActiveSignal, pct

__all__ = ["OneCause", "OneCauseThresholds", "OneCauseState", "EXPLAINED_BY"]

UPDATE_KINDS = frozenset({"update_divergence", "nonfinite_update", "stale_update", "free_rider"})
DRIFT_KINDS = frozenset({"feature_drift", "data_drift"})

EXPLAINED_BY: dict[str, frozenset[str] | None] = {
    "fairness_regression": None,  # any client-level kind, on a worst-decile client
    "global_divergence": UPDATE_KINDS,
    "nonfinite_aggregate": UPDATE_KINDS,
    "global_stagnation": UPDATE_KINDS | {"dropout"},
    "participation_drop": frozenset({"dropout"}),
}
"""Federation-level kinds a client finding can explain, and by which client kinds."""

CONSEQUENCES = ("performance_drift", "update_divergence", "label_noise")
"""Client kinds a federation-wide change explains on its members (bit i of ``OneCauseState.caused``)."""

MEMORY_PATTERNS = ("direction_change", "cosine_drop")
"""``update_divergence`` patterns that compare a client with its own history (not within the round)."""

WIDE_EXPLAINS = ("fairness_regression", "global_divergence")
"""Federation kinds a federation-wide change explains (bit i of ``OneCauseState.federation_caused``):
the worst clients' accuracy and the global loss move when everyone's data does."""

CAUSED_BY_CAP = 50
"""At most this many clients listed in ``caused_by`` / ``clients`` (the count is always given)."""


@dataclass(frozen=True)
class OneCauseThresholds:
    federation_drift_min_share: float = threshold(
        0.5,
        "Share of the round's judged clients with feature drift at which it is one "
        "federation-wide change.",
    )
    federation_drift_min_clients: int = threshold(
        5, "... and at least this many clients (a 4-client federation is not 'federation-wide')."
    )


@dataclass
class OneCauseState(DetectorStateBase):
    """The open federation-wide change (none while ``since`` is 0)."""

    since: int = 0
    """First round of the open change; 0 = none open."""
    federation_caused: int = 0
    """Bit mask over :data:`WIDE_EXPLAINS`: federation kinds absorbed since the change opened."""
    member: np.ndarray = client_field(dtype=np.int64)
    """Round the client joined the open change (0 = not a member)."""
    caused: np.ndarray = client_field(dtype=np.int64)
    """Bit mask over :data:`CONSEQUENCES`: the member's findings absorbed since it joined."""

    def close(self) -> None:
        self.since, self.federation_caused, self.member[:], self.caused[:] = 0, 0, 0, 0


class OneCause(Detector):
    """Runs last; its work is :meth:`finish` (the analyzer calls it with every signal of the round)."""

    name = "one_cause"
    kinds = (
        FindingKind(
            "federation_drift",
            "federation",
            "Most clients' features moved at once: one federation-wide change (a new pipeline, "
            "firmware or population), listed with the clients and features.",
            "round 12: features of 28 of 30 clients moved at once (93%, threshold 50%); most: "
            "'pixel_27' (26 clients), 'pixel_35' (19); one federation-wide change",
        ),
    )
    Thresholds = OneCauseThresholds
    State = OneCauseState
    round_scores = (
        RoundScore(
            "federation_drift_share",
            "Share of the round's judged clients whose features drifted.",
            "fl_run_federation_drift_ratio",
        ),
    )

    def step(self, ctx: RoundContext, state: Any) -> Step:
        return Step()

    def finish(
        self, ctx: RoundContext, active: list[ActiveSignal], state: Any = None
    ) -> tuple[list[ActiveSignal], dict[str, float]]:
        st = state if state is not None else OneCauseState.fresh(ctx.cfg, ctx.num_clients)
        active, share, wide = _federation_drift(ctx, active, st)
        active = _explain(ctx, active, wide, st)
        if wide is not None:
            _describe(ctx, wide, st)
        return active, {"federation_drift_share": share}


def _judged_features(ctx: RoundContext) -> int:
    try:
        ready = ctx.output("feature_drift").values.get("ready")
    except KeyError:
        ready = None
    return int(np.sum(ready)) if ready is not None else int(ctx.ok.sum())


def _federation_drift(
    ctx: RoundContext, active: list[ActiveSignal], st: OneCauseState
) -> tuple[list[ActiveSignal], float, ActiveSignal | None]:
    th = ctx.th
    drifting = [a for a in active if a.client_id is not None and a.kind in DRIFT_KINDS]
    clients = sorted({a.client_id for a in drifting})
    judged = _judged_features(ctx)
    share = len(clients) / judged if judged else math.nan
    forms = (
        len(clients) >= th.federation_drift_min_clients and share >= th.federation_drift_min_share
    )
    if st.since and judged and not clients:
        st.close()  # nobody's features differ any more: the change is over
    if not (forms or st.since):
        return active, share, None
    if not st.since:
        st.close()
        st.since = ctx.round
    row = {c: int(ctx.idx[i]) for i, c in enumerate(ctx.ids)}
    for c in clients:
        if not st.member[row[c]]:
            st.member[row[c]] = ctx.round
    features: Counter[str] = Counter()
    for a in drifting:
        if a.kind == "feature_drift":
            top = a.details.get("top_features") or []
            features.update(str(t["feature"]) for t in top[:1])
    most = ", ".join(f"'{f}' ({n} clients)" for f, n in features.most_common(3))
    what = "moved at once" if forms else f"still differ (one change since round {st.since})"
    signal = ActiveSignal(
        kind="federation_drift",
        severity="warning",
        client_id=None,
        score=share if math.isfinite(share) else 0.0,
        threshold=th.federation_drift_min_share,
        message=(
            f"round {ctx.round}: features of {len(clients)} of {judged} clients {what} "
            f"({pct(share) if judged else 'n/a'}, threshold {pct(th.federation_drift_min_share)}); "
            f"most: {most or 'n/a'}; one federation-wide change"
        ),
        details={
            "since_round": st.since,
            "drifting_clients": len(clients),
            "features": dict(features.most_common(10)),
            "judged_clients": judged,
        },
    )
    unusual = _unusual_updates(ctx)
    kept = []
    for a in active:
        if a.client_id is not None and a.kind in DRIFT_KINDS:
            continue
        if a.client_id in row and st.member[row[a.client_id]] and a.client_id not in unusual:
            bit = _consequence_bit(a)
            if bit:
                st.caused[row[a.client_id]] |= bit
                continue
        kept.append(a)
    return [*kept, signal], share, signal


def _unusual_updates(ctx: RoundContext) -> set[str]:
    """Clients whose update stands out *within* this round (a streak of the within-round rule).

    Everyone's data moved, so everyone's update moved: one that still stands out
    against the others (a sign flip points against them) is not the shared change.
    """
    try:
        streak = ctx.output("update_anomalies").client_scores.get("update_anomaly_streak_rounds")
    except KeyError:
        streak = None
    if streak is None:
        return set()
    return {ctx.ids[i] for i in np.flatnonzero(np.nan_to_num(streak) > 0)}


def _consequence_bit(a: ActiveSignal) -> int:
    """The :data:`CONSEQUENCES` bit of a member's signal that the change explains (0: not explained)."""
    if a.kind == "update_divergence" and a.details.get("pattern") not in MEMORY_PATTERNS:
        return 0
    return 1 << CONSEQUENCES.index(a.kind) if a.kind in CONSEQUENCES else 0


def _describe(ctx: RoundContext, wide: ActiveSignal, st: OneCauseState) -> None:
    """The open change's clients and everything it absorbed so far, in the signal's details."""
    members = np.flatnonzero(st.member > 0)
    names = [str(ctx.client_ids[i]) for i in members]
    wide.details["clients"] = names[:CAUSED_BY_CAP]
    wide.details["clients_count"] = len(names)
    caused = {}
    for bit, kind in enumerate(CONSEQUENCES):
        hit = [str(ctx.client_ids[i]) for i in members if st.caused[i] & (1 << bit)]
        if hit:
            caused[kind] = hit[:CAUSED_BY_CAP]
    wide.details["caused"] = caused
    wide.details["updates_changed"] = caused.get("update_divergence", [])
    wide.details["federation_kinds"] = [
        k for bit, k in enumerate(WIDE_EXPLAINS) if st.federation_caused & (1 << bit)
    ]
    also = [f"{k.replace('_', ' ')} of {len(v)} client(s)" for k, v in caused.items()]
    also += [k.replace("_", " ") for k in wide.details["federation_kinds"]]
    if also:
        wide.message += "; it also explains " + ", ".join(also)


def _worst_decile(ctx: RoundContext) -> set[str]:
    acc = np.where(ctx.ok, np.asarray(ctx.data.eval_accuracy, dtype=np.float64), np.nan)
    good = np.flatnonzero(np.isfinite(acc))
    if not good.size:
        return set()
    k = max(1, math.ceil(0.1 * good.size))
    worst = good[np.argsort(acc[good], kind="stable")[:k]]
    return {ctx.ids[i] for i in worst}


def _explain(
    ctx: RoundContext, active: list[ActiveSignal], wide: ActiveSignal | None, st: OneCauseState
) -> list[ActiveSignal]:
    flagged: dict[str, set[str]] = {}
    for a in active:
        if a.client_id is not None:
            flagged.setdefault(a.kind, set()).add(a.client_id)
    if not flagged and wide is None:
        return active
    worst = None
    out = []
    for a in active:
        if a.client_id is not None or a.kind not in EXPLAINED_BY:
            out.append(a)
            continue
        kinds = EXPLAINED_BY[a.kind]
        if kinds is None:
            worst = _worst_decile(ctx) if worst is None else worst
            causes = set().union(*flagged.values()) & worst
        else:
            causes = set().union(*(flagged.get(k, set()) for k in kinds))
        if not causes and wide is not None and a.kind in WIDE_EXPLAINS:
            st.federation_caused |= 1 << WIDE_EXPLAINS.index(a.kind)
            continue  # the federation-wide change explains it: named in its finding
        if not causes:
            out.append(a)
            continue
        names = sorted(causes)
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        out.append(
            replace(
                a,
                severity="info",
                message=f"{a.message}; explained by open client findings on {shown}",
                details={**a.details, "caused_by": names[:CAUSED_BY_CAP]},
            )
        )
    return out
