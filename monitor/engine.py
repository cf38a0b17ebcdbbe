"""The signal engine: when a round closes, analyse it and keep findings current.

load (round's reports as arrays, detector state) -> :func:`monitor.detectors.analyze_round`
-> save (per-round scores, new state) -> :func:`monitor.findings.reconcile` -> findings.

Detector state lives in the store and is locked for the duration of one
round's analysis, so any number of analysis workers (threads in the service or
``fedsentinel worker`` processes, :mod:`monitor.worker`) produce the same
findings as one: rounds are analysed one at a time, in round order, by
whichever worker gets the lock. Claiming a round *is* taking that row lock
inside the transaction that analyses it and marks it analysed, so a round is
analysed exactly once, and a worker that dies mid-analysis rolls back and
releases the claim: the round is retried by the next worker that polls. On
PostgreSQL a worker skips runs whose state another worker holds
(``FOR UPDATE SKIP LOCKED``); SQLite serialises writers (``BEGIN IMMEDIATE``),
so the second worker finds the round already analysed.

A round that closes after a later round was already analysed is marked
analysed without signals (and logged): detector state only moves forward.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import bindparam, func, insert, select, update
from sqlmodel import Session

from monitor.detectors import DetectorState, RoundAnalysis, Thresholds, analyze_round
from monitor.findings import FindingRecord, reconcile
from monitor.settings import Settings
from monitor.store import Store
from monitor.store.prune import compact_run
from monitor.store.round_input import load_round_input
from monitor.store.scores import RoundScores, save_round_scores
from monitor.store.tables import DetectorStateRow, FindingRow, RoundRow, utcnow
from monitor.store.writes import _dialect_insert, load_run_config

log = logging.getLogger("fedsentinel.engine")

FindingsCallback = Callable[[str, Sequence[FindingRecord]], None]


class Engine:
    def __init__(
        self,
        store: Store,
        *,
        thresholds: Thresholds | None = None,
        resolve_after: int = 3,
        on_findings_opened: FindingsCallback | None = None,
        observe_seconds: Callable[[float], None] | None = None,
        after_round: Callable[[str, int], None] | None = None,
    ) -> None:
        self.store = store
        self.thresholds = thresholds or Thresholds()
        self.resolve_after = resolve_after
        self.on_findings_opened = on_findings_opened
        self.observe_seconds = observe_seconds
        self.after_round = after_round  # e.g. pruning old arrays once a round is analysed

    def pending_runs(self) -> list[str]:
        """Runs with closed, unanalysed rounds, the one waiting longest first."""
        with self.store.read_session() as session:
            rows = session.execute(
                select(RoundRow.run_id, func.min(RoundRow.closed_at).label("since"))
                .where(RoundRow.status == "closed", RoundRow.analyzed.is_(False))
                .group_by(RoundRow.run_id)
                .order_by("since")
            ).all()
        return [row.run_id for row in rows]

    def catch_up(self) -> dict[str, list[int]]:
        """Analyse every run's closed but unanalysed rounds (after a restart or a failed analysis)."""
        done: dict[str, list[int]] = {}
        for run_id in self.pending_runs():
            try:
                done[run_id] = self.analyze_pending(run_id)
            except Exception:  # noqa: BLE001
                log.exception("catch-up analysis of run %s failed", run_id)
        return done

    def analyze_pending(self, run_id: str, *, skip_locked: bool = False) -> list[int]:
        """Analyse every closed, not yet analysed round of a run, oldest first.

        With ``skip_locked`` (workers on PostgreSQL), stop as soon as another
        worker holds the run's state instead of waiting for it: that worker
        will analyse the rounds in order.
        """
        self._ensure_state(run_id)
        done: list[int] = []
        while True:
            opened: list[FindingRecord] = []
            with self.store.write_session() as session:
                analysed = self._analyze_next(session, run_id, opened, skip_locked)
            if analysed is None:
                return done
            done.append(analysed)
            if opened and self.on_findings_opened is not None:
                self.on_findings_opened(run_id, opened)
            if self.after_round is not None:
                self.after_round(run_id, analysed)

    # -- one round, inside one transaction ---------------------------------

    def _ensure_state(self, run_id: str) -> None:
        """Create the run's state row in a transaction of its own, committed before any claim:
        an uncommitted insert would make a second worker wait instead of skipping the run."""
        with self.store.write_session() as session:
            if session.get(DetectorStateRow, run_id) is None:
                session.execute(
                    _dialect_insert(session)(DetectorStateRow)
                    .values(run_id=run_id, last_round=-1, updated_at=utcnow())
                    .on_conflict_do_nothing()
                )

    def _lock_state(self, session: Session, run_id: str, skip_locked: bool) -> DetectorStateRow | None:
        """Claim the run: lock its state row (None: another worker holds it, ``skip_locked``)."""
        return session.execute(
            select(DetectorStateRow)
            .where(DetectorStateRow.run_id == run_id)
            .with_for_update(skip_locked=skip_locked and self.store.is_postgres)
            .execution_options(populate_existing=True)
        ).scalar_one_or_none()

    def _analyze_next(
        self, session: Session, run_id: str, opened: list[FindingRecord], skip_locked: bool = False
    ) -> int | None:
        state_row = self._lock_state(session, run_id, skip_locked)
        if state_row is None:
            return None
        late = session.execute(
            update(RoundRow)
            .where(RoundRow.run_id == run_id, RoundRow.status == "closed", RoundRow.analyzed.is_(False),
                   RoundRow.round <= state_row.last_round)
            .values(analyzed=True, analyzed_at=utcnow())
            .returning(RoundRow.round)
        ).scalars().all()
        for r in late:
            log.warning("run %s round %d closed after round %d was analysed; no signals for it",
                        run_id, r, state_row.last_round)
        round_row = session.execute(
            select(RoundRow)
            .where(RoundRow.run_id == run_id, RoundRow.status == "closed", RoundRow.analyzed.is_(False))
            .order_by(RoundRow.round)
            .limit(1)
        ).scalar_one_or_none()
        if round_row is None:
            return None
        started = time.perf_counter()
        config = load_run_config(session, run_id)
        data = load_round_input(session, config, round_row)
        state = (
            DetectorState.from_bytes(state_row.state, label=run_id) if state_row.state else DetectorState()
        )
        analysis = analyze_round(config, self.thresholds, state, data)
        elapsed = time.perf_counter() - started
        save_round_scores(
            session,
            RoundScores(
                run_id=run_id,
                round=round_row.round,
                client_ids=analysis.client_ids,
                client_scores=analysis.client_scores,
                round_scores=analysis.round_scores,
                computed_seconds=elapsed,
            ),
        )
        opened.extend(self._apply_findings(session, run_id, analysis, data.client_ids))
        state_row.state = analysis.state.to_bytes()
        state_row.last_round = round_row.round
        state_row.updated_at = utcnow()
        round_row.analyzed = True
        round_row.analyzed_at = utcnow()
        session.add_all([state_row, round_row])
        if self.observe_seconds is not None:
            self.observe_seconds(time.perf_counter() - started)
        return round_row.round

    def _apply_findings(
        self, session: Session, run_id: str, analysis: RoundAnalysis, observed: Sequence[str]
    ) -> list[FindingRecord]:
        """Reconcile and write with bulk statements (a round may touch thousands of findings)."""
        table = FindingRow.__table__
        rows = session.execute(
            select(*table.c).where(table.c.run_id == run_id, table.c.status == "open")
        ).all()
        records = [_record(row) for row in rows]
        changes = reconcile(records, analysis.active, analysis.round, self.resolve_after, observed)
        now = utcnow()
        changed = [
            {
                "finding_id": record.id,
                "severity": record.severity,
                "status": record.status,
                "last_round": record.last_round,
                "resolved_round": record.resolved_round,
                "score": _finite_or_none(record.score),
                "threshold": _finite_or_none(record.threshold),
                "message": record.message,
                "details_json": _details_json(record),
                "updated_at": now,
            }
            for record in changes.updated + changes.resolved
        ]
        if changed:
            session.execute(
                update(table)
                .where(table.c.id == bindparam("finding_id"))
                .values({k: bindparam(k) for k in changed[0] if k != "finding_id"}),
                changed,
            )
        if changes.opened:
            session.execute(
                insert(table),
                [
                    {
                        "run_id": run_id,
                        "kind": record.kind,
                        "severity": record.severity,
                        "status": "open",
                        "client_id": record.client_id,
                        "first_round": record.first_round,
                        "last_round": record.last_round,
                        "score": _finite_or_none(record.score),
                        "threshold": _finite_or_none(record.threshold),
                        "message": record.message,
                        "details_json": _details_json(record),
                        "opened_at": now,
                        "updated_at": now,
                    }
                    for record in changes.opened
                ],
            )
        return changes.opened


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _json_clean(value: object) -> object:
    """Details as strict JSON: non-finite floats become None, numpy scalars plain numbers."""
    if isinstance(value, dict):
        return {str(k): _json_clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_clean(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _details_json(record: FindingRecord) -> str:
    return json.dumps(_json_clean(record.details_for_store()), allow_nan=False, default=str)


def _record(row: Any) -> FindingRecord:
    """A stored finding (a row of the finding table) as the lifecycle sees it."""
    return FindingRecord.from_row_fields(
        id=row.id,
        kind=row.kind,
        severity=row.severity,
        client_id=row.client_id,
        first_round=row.first_round,
        last_round=row.last_round,
        score=row.score,
        threshold=row.threshold,
        message=row.message,
        details=json.loads(row.details_json or "{}"),
        status=row.status,
        resolved_round=row.resolved_round,
    )


def build_engine(store: Store, settings: Settings, **hooks: Any) -> Engine:
    """The engine as the settings configure it: with ``auto_prune``, each analysed round
    compacts the run's rounds that fell out of the retention window (monitor/store/prune.py)."""
    after_round = None
    if settings.auto_prune:
        retention = settings.retention_rounds

        def after_round(run_id: str, _round: int) -> None:
            with store.write_session() as session:
                compact_run(session, run_id, retention)

    return Engine(store, after_round=after_round, **hooks)
