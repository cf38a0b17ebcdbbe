"""Put a run's analysed state straight into the store (what monitor/engine.py writes)."""

from __future__ import annotations

import json

import numpy as np
from sqlmodel import Session

from monitor.exporter import CLIENT_SCORE_METRICS, STREAK_METRICS
from monitor.store import Store
from monitor.store.scores import RoundScores, save_round_scores
from monitor.store.tables import FindingRow, RoundRow, RunRow, utcnow

SCORE_NAMES = [key for _, key, _ in CLIENT_SCORE_METRICS + STREAK_METRICS]


def client_ids(n: int) -> list[str]:
    return [f"c{i:05d}" for i in range(n)]


def add_run(session: Session, run_id: str, expected: int) -> None:
    session.add(
        RunRow(run_id=run_id, config_json="{}", config_hash="0" * 64, expected_clients=expected)
    )
    session.flush()


def add_round(
    session: Session,
    run_id: str,
    rnd: int,
    ids: list[str],
    anomaly: np.ndarray,
    overrides: dict[str, np.ndarray] | None = None,
    round_scores: dict[str, float] | None = None,
) -> None:
    """A closed, analysed round with every exported score (zeros unless overridden)."""
    n = len(ids)
    session.add(RoundRow(run_id=run_id, round=rnd, status="closed", closed_at=utcnow(), reports=n,
                         analyzed=True))  # fmt: skip
    scores = {name: np.zeros(n) for name in SCORE_NAMES}
    scores["anomaly_score"] = np.asarray(anomaly, dtype=np.float64)
    scores.update(overrides or {})
    rs = {
        "participation_ratio": 1.0,
        "accuracy_mean": 0.8,
        "global_eval_loss": 0.5,
        "reports": float(n),
    }
    rs.update(round_scores or {})
    save_round_scores(
        session,
        RoundScores(run_id=run_id, round=rnd, client_ids=ids, client_scores=scores, round_scores=rs,
                    computed_seconds=0.01),
    )  # fmt: skip
    session.flush()


def add_finding(
    session: Session, run_id: str, kind: str, client: str | None, first: int, last: int,
    severity: str = "warning", active_streak: int | None = None,
) -> None:  # fmt: skip
    """A stored finding as the engine writes it (``active_streak`` defaults to every round active)."""
    streak = last - first + 1 if active_streak is None else active_streak
    session.add(FindingRow(run_id=run_id, kind=kind, severity=severity, client_id=client, first_round=first,
                           last_round=last, message=f"{kind} on {client}",
                           details_json=json.dumps({"active_streak": streak})))  # fmt: skip


def populate(store: Store, run_id: str, n: int, rounds: int = 1, seed: int = 0) -> list[str]:
    """``rounds`` analysed rounds of ``n`` clients with random anomaly scores; returns the ids."""
    rng = np.random.default_rng(seed)
    ids = client_ids(n)
    with store.write_session() as session:
        add_run(session, run_id, n)
        for rnd in range(1, rounds + 1):
            add_round(session, run_id, rnd, ids, rng.gamma(2.0, 0.2, n))
    return ids
