"""Storing and listing Alertmanager webhook notifications (table ``alert_notification``)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, select
from sqlmodel import Session

from monitor.store.tables import AlertNotificationRow, utcnow

__all__ = ["AlertFilter", "NotifiedAlert", "save_notification", "list_alerts"]


@dataclass(frozen=True)
class NotifiedAlert:
    """One alert out of a notification, as the webhook received it."""

    status: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    starts_at: datetime | None
    ends_at: datetime | None
    fingerprint: str | None
    generator_url: str | None


@dataclass(frozen=True)
class AlertFilter:
    run_id: str | None = None
    client_id: str | None = None
    alertname: str | None = None
    status: str | None = None
    severity: str | None = None


def _real_time(value: datetime | None) -> datetime | None:
    """Alertmanager sends ``0001-01-01T00:00:00Z`` for "no end yet"."""
    return None if value is None or value.year <= 1 else value


def save_notification(
    session: Session, receiver: str, group_key: str | None, alerts: Iterable[NotifiedAlert]
) -> int:
    """Store every alert of one notification; return how many were stored."""
    now = utcnow()
    rows = [
        AlertNotificationRow(
            received_at=now,
            receiver=receiver[:256],
            group_key=(group_key or None) and group_key[:1024],
            status=alert.status,
            alertname=_cut(alert.labels.get("alertname"), 256),
            severity=_cut(alert.labels.get("severity"), 32),
            run_id=_cut(alert.labels.get("run"), 128),
            client_id=_cut(alert.labels.get("client"), 128),
            fingerprint=_cut(alert.fingerprint, 64),
            starts_at=_real_time(alert.starts_at),
            ends_at=_real_time(alert.ends_at),
            generator_url=_cut(alert.generator_url, 2048),
            labels_json=json.dumps(dict(alert.labels), sort_keys=True),
            annotations_json=json.dumps(dict(alert.annotations), sort_keys=True),
        )
        for alert in alerts
    ]
    session.add_all(rows)
    return len(rows)


def list_alerts(
    session: Session, where: AlertFilter, offset: int = 0, limit: int = 100
) -> tuple[list[dict[str, Any]], int]:
    """Stored alert notifications, newest first, and the total that match."""
    clauses = []
    for column, value in (
        (AlertNotificationRow.run_id, where.run_id),
        (AlertNotificationRow.client_id, where.client_id),
        (AlertNotificationRow.alertname, where.alertname),
        (AlertNotificationRow.status, where.status),
        (AlertNotificationRow.severity, where.severity),
    ):
        if value is not None:
            clauses.append(column == value)
    condition = and_(True, *clauses)
    total = session.execute(
        select(func.count()).select_from(AlertNotificationRow).where(condition)
    ).scalar_one()
    rows = session.execute(
        select(AlertNotificationRow)
        .where(condition)
        .order_by(AlertNotificationRow.id.desc())
        .offset(offset)
        .limit(limit)
    ).scalars()
    items = [
        {
            "id": row.id,
            "received_at": row.received_at,
            "receiver": row.receiver,
            "status": row.status,
            "alertname": row.alertname,
            "severity": row.severity,
            "run_id": row.run_id,
            "client_id": row.client_id,
            "fingerprint": row.fingerprint,
            "starts_at": row.starts_at,
            "ends_at": row.ends_at,
            "generator_url": row.generator_url,
            "labels": json.loads(row.labels_json),
            "annotations": json.loads(row.annotations_json),
        }
        for row in rows
    ]
    return items, total


def _cut(value: str | None, length: int) -> str | None:
    """Label values are free text from Alertmanager; the indexed columns have bounds (the full
    labels stay in ``labels_json``)."""
    return None if value is None else value[:length]
