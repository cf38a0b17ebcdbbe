"""Bounded storage: compact the client arrays of rounds the analysis has left behind.

A client report is a few scalars plus a few kilobytes of float64 arrays (update
sketch, label histogram, feature histograms). The detectors read a round's
arrays once, when the round is analysed, and keep what they need later in
their state (references, previous sketches) and in the per-round scores; the
arrays of old rounds only serve the history API. So rounds more than
``retention_rounds`` behind a run's last analysed round lose their arrays:
the scalars (losses, accuracies, norms, wall time, status), the content hash
(duplicate detection), the per-round scores, the detector state and the
findings all stay. The round is marked ``arrays_compacted``, and the history
API says so instead of returning partial data silently.

Only closed, analysed rounds are ever compacted; a run's newest
``retention_rounds`` rounds are never touched. Both dialects reuse the freed
space for new rows (PostgreSQL after autovacuum, SQLite through its free
pages); neither shrinks the file on disk without ``VACUUM``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlmodel import Session

from monitor.store.tables import ClientReportRow, DetectorStateRow, RoundRow

log = logging.getLogger("fedsentinel.prune")

ARRAY_COLUMNS = ("update_sketch", "label_histogram", "feature_histograms")


@dataclass(frozen=True)
class PruneResult:
    run_id: str
    rounds: list[int]
    reports: int


def compactable_rounds(session: Session, run_id: str, retention_rounds: int) -> list[int]:
    """Closed, analysed, not yet compacted rounds older than the retention window."""
    last = session.execute(
        select(DetectorStateRow.last_round).where(DetectorStateRow.run_id == run_id)
    ).scalar_one_or_none()
    if last is None or last < 0:
        return []
    horizon = last - retention_rounds  # rounds <= horizon are outside the window
    return list(
        session.execute(
            select(RoundRow.round)
            .where(
                RoundRow.run_id == run_id,
                RoundRow.round <= horizon,
                RoundRow.status == "closed",
                RoundRow.analyzed.is_(True),
                RoundRow.arrays_compacted.is_(False),
            )
            .order_by(RoundRow.round)
        ).scalars()
    )


def compact_run(session: Session, run_id: str, retention_rounds: int) -> PruneResult:
    """Drop the arrays of one run's rounds outside the retention window (one transaction)."""
    rounds = compactable_rounds(session, run_id, retention_rounds)
    if not rounds:
        return PruneResult(run_id, [], 0)
    table = ClientReportRow.__table__
    result = session.execute(
        update(table)
        .where(table.c.run_id == run_id, table.c.round.in_(rounds))
        .values({name: None for name in ARRAY_COLUMNS})
    )
    session.execute(
        update(RoundRow)
        .where(RoundRow.run_id == run_id, RoundRow.round.in_(rounds))
        .values(arrays_compacted=True)
    )
    return PruneResult(run_id, rounds, int(result.rowcount or 0))


def runs_with_history(session: Session) -> list[str]:
    return list(
        session.execute(select(DetectorStateRow.run_id).order_by(DetectorStateRow.run_id)).scalars()
    )
