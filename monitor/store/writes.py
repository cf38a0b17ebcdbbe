"""Write paths: register a run, ingest client reports, close a round.

Each function runs inside a caller-provided write transaction, so a 2xx answer
is only sent after the commit. Idempotency is by content hash: the same report
(or round close, or registration) sent again is recognised and not stored twice;
a different one for the same key is a :class:`~monitor.errors.Conflict`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from sqlalchemy import Row, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session

from monitor.errors import Conflict, NotFound
from monitor.schemas import ClientReport, RoundClose, RunCreate
from monitor.store.codec import pack, split_nonfinite
from monitor.store.report_rows import COLUMNS, DIGEST_PREFIX, PreparedReport, legacy_digest
from monitor.store.tables import ClientReportRow, RoundRow, RunRow, utcnow

_IN_CHUNK = 900  # keeps IN (...) lists under every backend's parameter limit
_MAX_NAMED = 5


def content_hash(model: RunCreate | ClientReport | RoundClose) -> str:
    """Hash of what was sent: defaults left out (so a later optional field does not turn an
    identical resend into a conflict) and dict keys sorted by the schema's validators."""
    return hashlib.sha256(model.model_dump_json(exclude_defaults=True).encode()).hexdigest()


def register_run(session: Session, spec: RunCreate) -> bool:
    """Store a run; return False when the identical run already exists."""
    digest = content_hash(spec)
    inserted = session.execute(
        _dialect_insert(session)(RunRow)
        .values(
            run_id=spec.run_id,
            name=spec.name,
            created_at=utcnow(),
            config_json=spec.model_dump_json(),
            config_hash=digest,
            expected_clients=spec.expected_clients,
            planned_rounds=spec.planned_rounds,
        )
        .on_conflict_do_nothing()
        .returning(RunRow.run_id)
    ).scalar_one_or_none()
    if inserted is not None:
        return True
    existing = session.execute(
        select(RunRow.config_hash).where(RunRow.run_id == spec.run_id)
    ).scalar_one()
    if existing != digest:
        raise Conflict(
            f"run {spec.run_id} is already registered with a different configuration; "
            "register a new run_id to change it"
        )
    return False


def load_run_config(session: Session, run_id: str) -> RunCreate:
    row = session.get(RunRow, run_id)
    if row is None:
        raise NotFound(f"run {run_id} is not registered")
    return RunCreate.model_validate_json(row.config_json)


def _dialect_insert(session: Session):  # type: ignore[no-untyped-def]
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


def lock_round(session: Session, run_id: str, round_number: int) -> Row:
    """Get the round's ``status``, ``reports`` and ``close_hash``, creating it open, and hold
    its lock until commit.

    Report ingestion and round closing both take this lock, so a report can
    never slip into a round that is being closed. Core statements on the
    session's connection (no ORM objects): this runs on every ingest request.
    """
    table = RoundRow.__table__
    connection = session.connection()
    connection.execute(
        _dialect_insert(session)(table)
        .values(run_id=run_id, round=round_number, status="open", opened_at=utcnow(), reports=0)
        .on_conflict_do_nothing()
    )
    return connection.execute(
        select(table.c.status, table.c.reports, table.c.close_hash)
        .where(table.c.run_id == run_id, table.c.round == round_number)
        .with_for_update()
    ).one()


def _names(ids: Sequence[str]) -> str:
    shown = ", ".join(sorted(ids)[:_MAX_NAMED])
    more = len(ids) - _MAX_NAMED
    return shown + (f" and {more} more" if more > 0 else "")


def _bulk_insert(
    session: Session, run_id: str, round_number: int, rows: Sequence[PreparedReport]
) -> None:
    """One ``executemany`` of plain tuples through the driver: no ORM objects, no per-row
    type processing (the received-at timestamp, the only value that needs it, is shared)."""
    table = ClientReportRow.__table__
    dialect = session.get_bind().dialect
    to_db = table.c.received_at.type.dialect_impl(dialect).bind_processor(dialect)
    received = utcnow() if to_db is None else to_db(utcnow())
    columns = ("run_id", "round", "received_at", *COLUMNS)
    marker = "?" if dialect.paramstyle == "qmark" else "%s"
    sql = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({', '.join([marker] * len(columns))})"
    head = (run_id, round_number, received)
    session.connection().exec_driver_sql(sql, [head + row.values for row in rows])


def _stored_digests(
    session: Session, run_id: str, round_number: int, client_ids: list[str]
) -> dict[str, str]:
    """Digests already stored for these clients in this round (none to look up in an empty round)."""
    table = ClientReportRow.__table__
    stored: dict[str, str] = {}
    for start in range(0, len(client_ids), _IN_CHUNK):
        chunk = client_ids[start : start + _IN_CHUNK]
        stored.update(
            session.connection()
            .execute(
                select(table.c.client_id, table.c.content_hash).where(
                    table.c.run_id == run_id,
                    table.c.round == round_number,
                    table.c.client_id.in_(chunk),
                )
            )
            .all()
        )
    return stored


def _same_report(row: PreparedReport, stored: str) -> bool:
    """Compare with a stored digest, of this scheme or of the one before it."""
    if stored.startswith(DIGEST_PREFIX):
        return stored == row.digest
    return stored == legacy_digest(row.model())


def ingest_reports(
    session: Session, run_id: str, round_number: int, reports: Sequence[PreparedReport]
) -> tuple[int, int]:
    """Store a batch of reports for one round; return ``(accepted, duplicates)``.

    All or nothing: a conflict anywhere in the batch stores none of it. Identical
    resends are recognised even after the round closed (a replayed spool must
    not fail); a new or different report for a closed round is a conflict.
    """
    hashes: dict[str, str] = {}
    unique: list[PreparedReport] = []
    duplicates = 0
    for report in reports:
        seen = hashes.get(report.client_id)
        if seen is None:
            hashes[report.client_id] = report.digest
            unique.append(report)
        elif seen == report.digest:
            duplicates += 1
        else:
            raise Conflict(
                f"run {run_id} round {round_number}: the request carries two different "
                f"reports for client {report.client_id}"
            )

    round_row = lock_round(session, run_id, round_number)
    stored = _stored_digests(
        session, run_id, round_number, list(hashes) if round_row.reports else []
    )
    conflicting = [
        r.client_id
        for r in unique
        if r.client_id in stored and not _same_report(r, stored[r.client_id])
    ]
    if conflicting:
        raise Conflict(
            f"run {run_id} round {round_number}: client(s) {_names(conflicting)} already "
            "reported different statistics for this round"
        )
    new = [r for r in unique if r.client_id not in stored]
    if new and round_row.status == "closed":
        raise Conflict(
            f"run {run_id} round {round_number} is closed; refused reports for client(s) "
            f"{_names([r.client_id for r in new])}"
        )
    duplicates += len(unique) - len(new)
    if new:
        _bulk_insert(session, run_id, round_number, new)
        rounds = RoundRow.__table__
        session.connection().execute(
            update(rounds)
            .where(rounds.c.run_id == run_id, rounds.c.round == round_number)
            .values(reports=rounds.c.reports + len(new))
        )
    return len(new), duplicates


def close_round(
    session: Session, run_id: str, round_number: int, body: RoundClose
) -> tuple[bool, int]:
    """Close a round; return ``(already_closed, reports)``."""
    digest = content_hash(body)
    row = lock_round(session, run_id, round_number)
    if row.status == "closed":
        if row.close_hash != digest:
            raise Conflict(
                f"run {run_id} round {round_number} is already closed with different statistics"
            )
        return True, row.reports
    scalars, nonfinite = split_nonfinite(
        {
            "global_eval_loss": body.global_eval_loss,
            "aggregate_update_norm": body.aggregate_update_norm,
        }
    )
    session.execute(
        update(RoundRow)
        .where(RoundRow.run_id == run_id, RoundRow.round == round_number)
        .values(
            status="closed",
            closed_at=utcnow(),
            close_hash=digest,
            global_eval_accuracy=body.global_eval_accuracy,
            aggregate_sketch=pack(body.aggregate_sketch),
            num_sampled=body.num_sampled,
            epsilon=body.epsilon,
            nonfinite=nonfinite,
            **scalars,
        )
    )
    return False, row.reports


def count_reports(session: Session, run_id: str) -> int:
    return session.execute(
        select(func.count()).select_from(ClientReportRow).where(ClientReportRow.run_id == run_id)
    ).scalar_one()
