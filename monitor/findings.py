"""Finding lifecycle: one finding per ongoing problem, opened, updated, resolved.

A finding is keyed by ``(kind, client_id)`` (``client_id`` None for
federation-level problems). Each round the engine passes the open findings and
the round's active signals to :func:`reconcile`:

* an active signal with no open finding of its key opens one;
* an active signal whose key is open updates it (``last_round``, ``score``,
  ``threshold``, ``severity``, ``message``, ``details``; ``peak_score`` keeps
  the worst) and zeroes its quiet counter;
* an open finding whose key is not active gets one more quiet round, and is
  resolved after ``resolve_after`` consecutive quiet rounds.

A client finding whose client was not observed this round (not sampled, no
report) neither updates nor counts quiet rounds when ``observed_clients`` is
given: absence is not evidence of recovery. Pure: no I/O, inputs not mutated.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = ["FindingRecord", "Reconciliation", "reconcile", "finding_key"]


@dataclass
class FindingRecord:
    """A finding as the store keeps it (maps onto ``FindingRow``).

    ``quiet_rounds`` (consecutive observed rounds without the signal) is the
    only field without a table column; the store may keep it in
    ``details["quiet_rounds"]`` (see :meth:`from_row_fields`).
    """

    kind: str
    severity: str
    client_id: str | None
    first_round: int
    last_round: int
    score: float | None
    threshold: float | None
    message: str
    details: dict[str, Any] = field(default_factory=dict)
    status: str = "open"
    resolved_round: int | None = None
    quiet_rounds: int = 0
    active_streak: int = 1
    """Consecutive rounds, up to ``last_round``, in which the signal was active."""
    peak_score: float | None = None
    id: int | None = None

    @property
    def key(self) -> tuple[str, str | None]:
        return (self.kind, self.client_id)

    def details_for_store(self) -> dict[str, Any]:
        """``details`` plus the lifecycle counters, for a store without columns for them."""
        return {
            **self.details,
            "quiet_rounds": self.quiet_rounds,
            "peak_score": self.peak_score,
            "active_streak": self.active_streak,
        }

    @classmethod
    def from_row_fields(cls, **row: Any) -> FindingRecord:
        """Build from a store row's fields; reads ``quiet_rounds``/``peak_score`` back out of ``details``."""
        details = dict(row.pop("details", None) or {})
        quiet = int(details.pop("quiet_rounds", 0) or 0)
        streak = int(details.pop("active_streak", 1) or 1)
        peak = details.pop("peak_score", None)
        known = {k: v for k, v in row.items() if k in cls.__dataclass_fields__}
        return cls(details=details, quiet_rounds=quiet, peak_score=peak, active_streak=streak, **known)


@dataclass
class Reconciliation:
    """What to write: new findings, changed open findings, findings to resolve."""

    opened: list[FindingRecord] = field(default_factory=list)
    updated: list[FindingRecord] = field(default_factory=list)
    resolved: list[FindingRecord] = field(default_factory=list)


def finding_key(kind: str, client_id: str | None) -> tuple[str, str | None]:
    return (kind, client_id)


def _worse(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


def reconcile(
    open_findings: Iterable[FindingRecord],
    active: Iterable[Any],
    round: int,
    resolve_after: int = 3,
    observed_clients: Iterable[str] | None = None,
) -> Reconciliation:
    """Turn one round's active signals into finding changes.

    Parameters
    ----------
    open_findings : FindingRecord
        The run's findings with ``status == "open"``; at most one per key.
    active : ActiveSignal-like
        Objects with ``kind``, ``severity``, ``client_id``, ``score``,
        ``threshold``, ``message``, ``details``
        (:class:`monitor.detectors.ActiveSignal`). Several with the same key
        are merged: the highest score wins.
    round : int
        The round just analysed.
    resolve_after : int
        Consecutive quiet rounds after which a finding is resolved (>= 1).
    observed_clients : iterable of str, optional
        Clients that reported this round; when given, client findings of other
        clients are left untouched.

    Returns
    -------
    Reconciliation
        New :class:`FindingRecord` objects (inputs are not mutated). Resolved
        findings carry ``status="resolved"`` and ``resolved_round=round``.
    """
    if resolve_after < 1:
        raise ValueError("resolve_after must be >= 1")
    seen = None if observed_clients is None else set(observed_clients)
    by_key: dict[tuple[str, str | None], Any] = {}
    for a in active:
        k = finding_key(a.kind, a.client_id)
        if k not in by_key or (a.score or 0) > (by_key[k].score or 0):
            by_key[k] = a

    out = Reconciliation()
    open_keys: set[tuple[str, str | None]] = set()
    for f in open_findings:
        if f.status != "open":
            continue
        open_keys.add(f.key)
        a = by_key.get(f.key)
        if a is not None:
            out.updated.append(
                replace(
                    f,
                    severity=a.severity,
                    last_round=round,
                    score=a.score,
                    threshold=a.threshold,
                    message=a.message,
                    details=dict(a.details),
                    quiet_rounds=0,
                    active_streak=f.active_streak + 1 if f.quiet_rounds == 0 else 1,
                    peak_score=_worse(f.peak_score, a.score),
                )
            )
            continue
        if f.client_id is not None and seen is not None and f.client_id not in seen:
            continue
        quiet = f.quiet_rounds + 1
        if quiet >= resolve_after:
            out.resolved.append(
                replace(f, quiet_rounds=quiet, status="resolved", resolved_round=round)
            )
        else:
            out.updated.append(replace(f, quiet_rounds=quiet))

    for k, a in by_key.items():
        if k in open_keys:
            continue
        out.opened.append(
            FindingRecord(
                kind=a.kind,
                severity=a.severity,
                client_id=a.client_id,
                first_round=round,
                last_round=round,
                score=a.score,
                threshold=a.threshold,
                message=a.message,
                details=dict(a.details),
                peak_score=a.score,
            )
        )
    return out
