"""Read paths behind the query API. Every function returns wire models."""

from __future__ import annotations

import json
from collections.abc import Sequence

from sqlalchemy import and_, func, select, tuple_
from sqlmodel import Session

from monitor.errors import NotFound
from monitor.schemas import (
    ClientLatest,
    ClientRoundOut,
    FindingOut,
    RoundOut,
    RunCreate,
    RunDetail,
    RunHealth,
    RunSummary,
)
from monitor.store.codec import restore_nonfinite, unpack, unpack_ragged
from monitor.store.tables import ClientReportRow, FindingRow, RoundRow, RunRow


def _require_run(session: Session, run_id: str) -> RunRow:
    row = session.get(RunRow, run_id)
    if row is None:
        raise NotFound(f"run {run_id} is not registered")
    return row


def list_runs(session: Session, offset: int, limit: int) -> tuple[list[RunSummary], int]:
    total = session.execute(select(func.count()).select_from(RunRow)).scalar_one()
    stats = (
        select(
            RoundRow.run_id,
            func.count().label("rounds"),
            func.max(RoundRow.round).label("last_round"),
        )
        .group_by(RoundRow.run_id)
        .subquery()
    )
    rows = session.execute(
        select(RunRow, stats.c.rounds, stats.c.last_round)
        .outerjoin(stats, stats.c.run_id == RunRow.run_id)
        .order_by(RunRow.created_at, RunRow.run_id)
        .offset(offset)
        .limit(limit)
    ).all()
    items = [
        RunSummary(
            run_id=run.run_id,
            name=run.name,
            created_at=run.created_at,
            expected_clients=run.expected_clients,
            rounds=rounds or 0,
            last_round=last_round,
        )
        for run, rounds, last_round in rows
    ]
    return items, total


def _round_out(row: RoundRow) -> RoundOut:
    scalars = restore_nonfinite(
        {"global_eval_loss": row.global_eval_loss, "aggregate_update_norm": row.aggregate_update_norm},
        row.nonfinite,
    )
    sketch = unpack(row.aggregate_sketch)
    return RoundOut(
        round=row.round,
        status=row.status,
        reports=row.reports,
        opened_at=row.opened_at,
        closed_at=row.closed_at,
        global_eval_accuracy=row.global_eval_accuracy,
        aggregate_sketch=None if sketch is None else sketch.tolist(),
        num_sampled=row.num_sampled,
        epsilon=row.epsilon,
        analyzed=row.analyzed,
        analyzed_at=row.analyzed_at,
        arrays_compacted=row.arrays_compacted,
        **scalars,
    )


def run_health(session: Session, run: RunRow, config: RunCreate) -> RunHealth:
    counts = dict(
        session.execute(
            select(RoundRow.status, func.count()).where(RoundRow.run_id == run.run_id).group_by(RoundRow.status)
        ).all()
    )
    last_round_reported, reports = session.execute(
        select(func.max(RoundRow.round), func.coalesce(func.sum(RoundRow.reports), 0)).where(
            RoundRow.run_id == run.run_id, RoundRow.reports > 0
        )
    ).one()
    last_closed = session.execute(
        select(RoundRow)
        .where(RoundRow.run_id == run.run_id, RoundRow.status == "closed")
        .order_by(RoundRow.round.desc())
        .limit(1)
    ).scalar_one_or_none()
    clients_seen = session.execute(
        select(func.count(func.distinct(ClientReportRow.client_id))).where(
            ClientReportRow.run_id == run.run_id
        )
    ).scalar_one()
    epsilon = session.execute(
        select(RoundRow.epsilon)
        .where(RoundRow.run_id == run.run_id, RoundRow.epsilon.is_not(None))
        .order_by(RoundRow.round.desc())
        .limit(1)
    ).scalar_one_or_none()
    open_findings = dict(
        session.execute(
            select(FindingRow.severity, func.count())
            .where(FindingRow.run_id == run.run_id, FindingRow.status == "open")
            .group_by(FindingRow.severity)
        ).all()
    )
    participation = None
    accuracy = loss = gap = None
    if last_closed is not None:
        ok_reports = session.execute(
            select(func.count()).where(
                ClientReportRow.run_id == run.run_id,
                ClientReportRow.round == last_closed.round,
                ClientReportRow.status == "ok",
            )
        ).scalar_one()
        expected = last_closed.num_sampled or run.expected_clients
        participation = ok_reports / expected if expected else None
        closed_out = _round_out(last_closed)
        accuracy, loss = closed_out.global_eval_accuracy, closed_out.global_eval_loss
        if accuracy is not None and config.centralized_accuracy is not None:
            gap = config.centralized_accuracy - accuracy
    return RunHealth(
        rounds_closed=counts.get("closed", 0),
        rounds_open=counts.get("open", 0),
        last_closed_round=None if last_closed is None else last_closed.round,
        clients_seen=clients_seen,
        reports=reports,
        last_round_reported=last_round_reported,
        last_round_participation_ratio=participation,
        global_eval_accuracy=accuracy,
        global_eval_loss=loss,
        centralized_gap=gap,
        epsilon=epsilon,
        open_findings=open_findings,
    )


def run_detail(session: Session, run_id: str) -> RunDetail:
    run = _require_run(session, run_id)
    config = RunCreate.model_validate_json(run.config_json)
    return RunDetail(
        run_id=run.run_id,
        created_at=run.created_at,
        config=config,
        health=run_health(session, run, config),
    )


def list_rounds(
    session: Session, run_id: str, offset: int, limit: int, status: str | None = None
) -> tuple[list[RoundOut], int]:
    _require_run(session, run_id)
    where = [RoundRow.run_id == run_id]
    if status:
        where.append(RoundRow.status == status)
    total = session.execute(select(func.count()).select_from(RoundRow).where(*where)).scalar_one()
    rows = session.execute(
        select(RoundRow).where(*where).order_by(RoundRow.round).offset(offset).limit(limit)
    ).scalars()
    return [_round_out(r) for r in rows], total


def get_round(session: Session, run_id: str, round_number: int) -> RoundOut:
    _require_run(session, run_id)
    row = session.get(RoundRow, (run_id, round_number))
    if row is None:
        raise NotFound(f"run {run_id} has no round {round_number}")
    return _round_out(row)


def list_clients(
    session: Session, run_id: str, offset: int, limit: int
) -> tuple[list[ClientLatest], int]:
    """The clients of a run with the values of their latest report."""
    _require_run(session, run_id)
    total = session.execute(
        select(func.count(func.distinct(ClientReportRow.client_id))).where(
            ClientReportRow.run_id == run_id
        )
    ).scalar_one()
    spans = session.execute(
        select(
            ClientReportRow.client_id,
            func.min(ClientReportRow.round),
            func.max(ClientReportRow.round),
            func.count(),
        )
        .where(ClientReportRow.run_id == run_id)
        .group_by(ClientReportRow.client_id)
        .order_by(ClientReportRow.client_id)
        .offset(offset)
        .limit(limit)
    ).all()
    if not spans:
        return [], total
    latest = {
        row.client_id: row
        for row in session.execute(
            select(ClientReportRow).where(
                ClientReportRow.run_id == run_id,
                tuple_(ClientReportRow.client_id, ClientReportRow.round).in_(
                    [(cid, last) for cid, _, last, _ in spans]
                ),
            )
        ).scalars()
    }
    items = []
    for cid, first, last, n in spans:
        row = latest[cid]
        scalars = restore_nonfinite(
            {"eval_loss": row.eval_loss, "update_norm": row.update_norm}, row.nonfinite
        )
        items.append(
            ClientLatest(
                client_id=cid,
                first_round=first,
                last_round=last,
                rounds_reported=n,
                status=row.status,
                eval_accuracy=row.eval_accuracy,
                num_examples=row.num_examples,
                **scalars,
            )
        )
    return items, total


def _noise_out(row: ClientReportRow) -> dict | None:
    if row.noise_json:
        return json.loads(row.noise_json)
    if row.noise_mechanism:  # stored before noise_json existed
        return {"mechanism": row.noise_mechanism, "scale": row.noise_scale}
    return None


def report_out(row: ClientReportRow, config: RunCreate, compacted: bool = False) -> ClientRoundOut:

    scalars = restore_nonfinite(
        {
            "train_loss": row.train_loss,
            "eval_loss": row.eval_loss,
            "update_norm": row.update_norm,
            "update_cosine_previous_global": row.update_cosine_previous_global,
        },
        row.nonfinite,
    )
    sketch = unpack(row.update_sketch)
    labels = unpack(row.label_histogram)
    features = unpack_ragged(row.feature_histograms, config.bins_per_feature)
    return ClientRoundOut(
        client_id=row.client_id,
        round=row.round,
        received_at=row.received_at,
        status=row.status,
        num_examples=row.num_examples,
        train_accuracy=row.train_accuracy,
        eval_accuracy=row.eval_accuracy,
        eval_examples=row.eval_examples,
        local_accuracy=row.local_accuracy,
        wall_time_seconds=row.wall_time_seconds,
        update_sketch=None if sketch is None else sketch.tolist(),
        label_histogram=None if labels is None else labels.tolist(),
        feature_histograms=None if features is None else [f.tolist() for f in features],
        histogram_noise=_noise_out(row),
        update_repeated=row.update_repeated,
        clipped=row.clipped,
        arrays_compacted=compacted,
        **scalars,
    )


def client_history(
    session: Session,
    run_id: str,
    client_id: str,
    from_round: int | None,
    to_round: int | None,
    offset: int,
    limit: int,
) -> tuple[list[ClientRoundOut], int]:
    run = _require_run(session, run_id)
    config = RunCreate.model_validate_json(run.config_json)
    where = [ClientReportRow.run_id == run_id, ClientReportRow.client_id == client_id]
    if from_round is not None:
        where.append(ClientReportRow.round >= from_round)
    if to_round is not None:
        where.append(ClientReportRow.round <= to_round)
    total = session.execute(select(func.count()).select_from(ClientReportRow).where(*where)).scalar_one()
    if total == 0:
        seen = session.execute(
            select(func.count())
            .select_from(ClientReportRow)
            .where(ClientReportRow.run_id == run_id, ClientReportRow.client_id == client_id)
        ).scalar_one()
        if not seen:
            raise NotFound(f"run {run_id} has no reports from client {client_id}")
    rows = session.execute(
        select(ClientReportRow, RoundRow.arrays_compacted)
        .join(RoundRow, and_(RoundRow.run_id == ClientReportRow.run_id, RoundRow.round == ClientReportRow.round))
        .where(*where)
        .order_by(ClientReportRow.round)
        .offset(offset)
        .limit(limit)
    ).all()
    return [report_out(r, config, bool(compacted)) for r, compacted in rows], total


def finding_out(row: FindingRow) -> FindingOut:
    return FindingOut(
        id=row.id or 0,
        run_id=row.run_id,
        kind=row.kind,
        severity=row.severity,
        status=row.status,
        client_id=row.client_id,
        first_round=row.first_round,
        last_round=row.last_round,
        score=row.score,
        threshold=row.threshold,
        message=row.message,
        details=json.loads(row.details_json or "{}"),
    )


def list_findings(
    session: Session,
    run_id: str,
    *,
    kinds: Sequence[str] = (),
    client_id: str | None = None,
    severities: Sequence[str] = (),
    status: str | None = None,
    from_round: int | None = None,
    to_round: int | None = None,
    offset: int = 0,
    limit: int = 100,
) -> tuple[list[FindingOut], int]:
    """Findings of a run; a round range selects findings whose span overlaps it."""
    _require_run(session, run_id)
    where = [FindingRow.run_id == run_id]
    if kinds:
        where.append(FindingRow.kind.in_(list(kinds)))
    if client_id is not None:
        where.append(FindingRow.client_id == client_id)
    if severities:
        where.append(FindingRow.severity.in_(list(severities)))
    if status:
        where.append(FindingRow.status == status)
    if from_round is not None:
        where.append(FindingRow.last_round >= from_round)
    if to_round is not None:
        where.append(FindingRow.first_round <= to_round)
    condition = and_(*where)
    total = session.execute(select(func.count()).select_from(FindingRow).where(condition)).scalar_one()
    rows = session.execute(
        select(FindingRow).where(condition).order_by(FindingRow.first_round, FindingRow.id).offset(offset).limit(limit)
    ).scalars()
    return [finding_out(r) for r in rows], total
