"""One finding for one cause: runs after every other detector and rewrites the round's signals.

* **A federation-wide change is one finding.** When at least
  ``federation_drift_min_share`` of the clients whose features were judged this
  round (and at least ``federation_drift_min_clients``) drift, their per-client
  ``feature_drift`` / ``data_drift`` signals are replaced by one ``federation_drift``
  signal that lists the clients and the features that moved most (a new pipeline
  or firmware everywhere is one change, not thirty alerts).
* **A consequence names its cause and does not page.** A federation-level signal
  that open client-level signals explain carries ``details.caused_by`` (the
  clients) and severity ``info``; the exporter leaves it out of
  ``fl_run_signal_streak_rounds``, so no alert rule fires on it:

  - ``fairness_regression``: flagged clients among this round's worst decile;
  - ``global_divergence``, ``nonfinite_aggregate``, ``global_stagnation``:
    clients flagged for their updates (divergent, non-finite, stale, free-riding);
  - ``participation_drop``: clients flagged as dropped out;
  - any of them, in a round with a ``federation_drift``: its clients (the
    federation-wide change is the cause). That finding also absorbs the
    memory-based ``update_divergence`` signals (direction change, cosine drop) of
    its clients in that round: their updates moved because their data did.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from monitor.detectors.base import Detector, FindingKind, RoundContext, RoundScore, Step, threshold
from monitor.detectors.output import ActiveSignal, pct

__all__ = ["OneCause", "OneCauseThresholds", "EXPLAINED_BY"]

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
        self, ctx: RoundContext, active: list[ActiveSignal]
    ) -> tuple[list[ActiveSignal], dict[str, float]]:
        active, share = _federation_drift(ctx, active)
        return _explain(ctx, active), {"federation_drift_share": share}


def _judged_features(ctx: RoundContext) -> int:
    try:
        ready = ctx.output("feature_drift").values.get("ready")
    except KeyError:
        ready = None
    return int(np.sum(ready)) if ready is not None else int(ctx.ok.sum())


def _federation_drift(
    ctx: RoundContext, active: list[ActiveSignal]
) -> tuple[list[ActiveSignal], float]:
    th = ctx.th
    drifting = [a for a in active if a.client_id is not None and a.kind in DRIFT_KINDS]
    clients = sorted({a.client_id for a in drifting})
    judged = _judged_features(ctx)
    share = len(clients) / judged if judged else math.nan
    if not (
        len(clients) >= th.federation_drift_min_clients and share >= th.federation_drift_min_share
    ):
        return active, share
    features: Counter[str] = Counter()
    for a in drifting:
        if a.kind == "feature_drift":
            top = a.details.get("top_features") or []
            features.update(str(t["feature"]) for t in top[:1])
    most = ", ".join(f"'{f}' ({n} clients)" for f, n in features.most_common(3))
    signal = ActiveSignal(
        kind="federation_drift",
        severity="warning",
        client_id=None,
        score=share,
        threshold=th.federation_drift_min_share,
        message=(
            f"round {ctx.round}: features of {len(clients)} of {judged} clients moved at once "
            f"({pct(share)}, threshold {pct(th.federation_drift_min_share)}); most: {most or 'n/a'}; "
            "one federation-wide change"
        ),
        details={
            "clients": clients[:CAUSED_BY_CAP],
            "clients_count": len(clients),
            "features": dict(features.most_common(10)),
            "judged_clients": judged,
        },
    )
    members = set(clients)
    # the change moves the members' updates too: memory evidence of this round is the same cause
    moved = [
        a
        for a in active
        if a.kind == "update_divergence"
        and a.client_id in members
        and a.details.get("pattern") in ("direction_change", "cosine_drop")
    ]
    signal.details["updates_changed"] = sorted(a.client_id for a in moved)[:CAUSED_BY_CAP]
    absorbed = {id(a) for a in moved}
    kept = [
        a
        for a in active
        if not (a.client_id is not None and a.kind in DRIFT_KINDS) and id(a) not in absorbed
    ]
    return [*kept, signal], share


def _worst_decile(ctx: RoundContext) -> set[str]:
    acc = np.where(ctx.ok, np.asarray(ctx.data.eval_accuracy, dtype=np.float64), np.nan)
    good = np.flatnonzero(np.isfinite(acc))
    if not good.size:
        return set()
    k = max(1, math.ceil(0.1 * good.size))
    worst = good[np.argsort(acc[good], kind="stable")[:k]]
    return {ctx.ids[i] for i in worst}


def _explain(ctx: RoundContext, active: list[ActiveSignal]) -> list[ActiveSignal]:
    flagged: dict[str, set[str]] = {}
    for a in active:
        if a.client_id is not None:
            flagged.setdefault(a.kind, set()).add(a.client_id)
    wide = next((a for a in active if a.kind == "federation_drift"), None)
    if wide is not None:  # a federation-wide change explains what follows from it
        flagged["federation_drift"] = set(wide.details.get("clients", []))
    if not flagged:
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
        if wide is not None and not causes:
            causes = flagged["federation_drift"]
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
