"""Read side of the analysis queue: how far the signal engine is behind, per run and overall."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import case, func, select
from sqlmodel import Session

from monitor.errors import NotFound
from monitor.schemas import AnalysisStatus
from monitor.store.tables import RoundRow, RunRow

_PENDING = (RoundRow.status == "closed", RoundRow.analyzed.is_(False))


def analysis_status(session: Session, run_id: str) -> AnalysisStatus:
    if session.get(RunRow, run_id) is None:
        raise NotFound(f"run {run_id} is not registered")
    closed, analysed = session.execute(
        select(
            func.count(),
            func.coalesce(func.sum(case((RoundRow.analyzed.is_(True), 1), else_=0)), 0),
        ).where(RoundRow.run_id == run_id, RoundRow.status == "closed")
    ).one()
    last = session.execute(
        select(func.max(RoundRow.round)).where(
            RoundRow.run_id == run_id, RoundRow.analyzed.is_(True)
        )
    ).scalar_one()
    pending = session.execute(
        select(RoundRow.round, RoundRow.closed_at)
        .where(RoundRow.run_id == run_id, *_PENDING)
        .order_by(RoundRow.round)
        .limit(100)
    ).all()
    lag = int(closed) - int(analysed)
    oldest = min((p.closed_at for p in pending if p.closed_at is not None), default=None)
    return AnalysisStatus(
        run_id=run_id,
        rounds_closed=int(closed),
        rounds_analyzed=int(analysed),
        last_analyzed_round=last,
        lag_rounds=lag,
        pending_rounds=[p.round for p in pending],
        oldest_pending_closed_at=oldest,
    )


@dataclass(frozen=True)
class AnalysisLag:
    """Over every run: the largest number of closed, unanalysed rounds of one run, and how
    long the oldest unanalysed close has waited (0 when nothing waits)."""

    max_lag_rounds: int
    pending_rounds: int
    oldest_pending_age_seconds: float


def analysis_lag(session: Session, now: datetime | None = None) -> AnalysisLag:
    rows = session.execute(
        select(RoundRow.run_id, func.count(), func.min(RoundRow.closed_at))
        .where(*_PENDING)
        .group_by(RoundRow.run_id)
    ).all()
    if not rows:
        return AnalysisLag(0, 0, 0.0)
    now = now or datetime.now(UTC)
    oldest = min(_aware(r[2]) for r in rows if r[2] is not None)
    return AnalysisLag(
        max_lag_rounds=max(int(r[1]) for r in rows),
        pending_rounds=sum(int(r[1]) for r in rows),
        oldest_pending_age_seconds=max(0.0, (now - oldest).total_seconds()),
    )


def _aware(value: datetime) -> datetime:
    """SQLite hands datetimes back naive; they were written in UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
