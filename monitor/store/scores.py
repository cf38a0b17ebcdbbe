"""Saving and reading the signal engine's per-round scores."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from sqlalchemy import select
from sqlmodel import Session

from monitor.store.tables import RoundScoresRow


@dataclass(frozen=True)
class RoundScores:
    run_id: str
    round: int
    client_ids: list[str]
    client_scores: dict[str, np.ndarray]
    round_scores: dict[str, float]
    computed_seconds: float


def save_round_scores(session: Session, scores: RoundScores) -> None:
    names = sorted(scores.client_scores)
    n = len(scores.client_ids)
    matrix = np.empty((n, len(names)), dtype="<f8")
    for j, name in enumerate(names):
        matrix[:, j] = np.asarray(scores.client_scores[name], dtype=np.float64)
    session.merge(
        RoundScoresRow(
            run_id=scores.run_id,
            round=scores.round,
            client_ids_json=json.dumps(scores.client_ids),
            score_names_json=json.dumps(names),
            client_scores=matrix.tobytes(),
            round_scores_json=json.dumps({k: float(v) for k, v in scores.round_scores.items()}),
            computed_seconds=scores.computed_seconds,
        )
    )


def _decode(row: RoundScoresRow) -> RoundScores:
    ids = json.loads(row.client_ids_json)
    names = json.loads(row.score_names_json)
    matrix = np.frombuffer(row.client_scores, dtype="<f8").reshape(len(ids), len(names))
    return RoundScores(
        run_id=row.run_id,
        round=row.round,
        client_ids=ids,
        client_scores={name: matrix[:, j] for j, name in enumerate(names)},
        round_scores=json.loads(row.round_scores_json),
        computed_seconds=row.computed_seconds,
    )


def latest_round_scores(session: Session, run_id: str) -> RoundScores | None:
    """Scores of the most recently analysed round of a run."""
    row = session.execute(
        select(RoundScoresRow)
        .where(RoundScoresRow.run_id == run_id)
        .order_by(RoundScoresRow.round.desc())
        .limit(1)
    ).scalar_one_or_none()
    return None if row is None else _decode(row)


def round_scores(session: Session, run_id: str, round_number: int) -> RoundScores | None:
    row = session.get(RoundScoresRow, (run_id, round_number))
    return None if row is None else _decode(row)


def iter_round_scores(session: Session, run_id: str) -> Iterator[RoundScores]:
    """Every analysed round's scores of a run, oldest first.

    Core rows (no ORM identity map) streamed in chunks, so a 200-round run of
    1,000 clients is never all in memory at once.
    """
    table = RoundScoresRow.__table__
    rows = session.execute(
        select(table)
        .where(table.c.run_id == run_id)
        .order_by(table.c.round)
        .execution_options(yield_per=20)
    )
    for row in rows:
        yield _decode(row)  # type: ignore[arg-type]  (a Row has the same attributes)
