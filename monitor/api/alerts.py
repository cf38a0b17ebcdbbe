"""Alerts: an Alertmanager webhook receiver (write scope or the webhook token) and a listing (read scope).

Alertmanager's ``webhook_config`` posts version-4 notifications::

    {"version": "4", "receiver": "...", "status": "firing", "groupKey": "...",
     "alerts": [{"status": "firing", "labels": {...}, "annotations": {...},
                 "startsAt": "...", "endsAt": "0001-01-01T00:00:00Z",
                 "generatorURL": "...", "fingerprint": "..."}], ...}

Every alert of every notification is stored (monitor/store/alerts.py), so
``GET /api/v1/alerts`` shows what was delivered, firing and resolved, and
``docs/alerts.md`` points each alert's runbook at these endpoints.
"""

from __future__ import annotations

import hmac
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import Session

from monitor.api.deps import Paging, ReadAccess, _presented_key, get_store, read_session, require
from monitor.api.errors import error_responses
from monitor.schemas import NO_NUL_PATTERN, Page, Text
from monitor.settings import Scope, Settings
from monitor.store import Store
from monitor.store.alerts import AlertFilter, NotifiedAlert, list_alerts, save_notification

router = APIRouter(prefix="/alerts", tags=["alerts"])

MAX_ALERTS_PER_NOTIFICATION = 10_000


class AlertmanagerAlert(BaseModel):
    model_config = ConfigDict(extra="ignore")

    status: Literal["firing", "resolved"]
    labels: dict[Text, Text] = Field(default_factory=dict)
    annotations: dict[Text, Text] = Field(default_factory=dict)
    startsAt: datetime | None = None
    endsAt: datetime | None = None
    generatorURL: Text | None = Field(default=None, max_length=2048)
    fingerprint: Text | None = Field(default=None, max_length=64)


class AlertmanagerNotification(BaseModel):
    """Alertmanager's webhook body, version 4."""

    model_config = ConfigDict(extra="ignore")

    version: Text = "4"
    receiver: Text = Field(max_length=256)
    status: Literal["firing", "resolved"]
    alerts: list[AlertmanagerAlert] = Field(max_length=MAX_ALERTS_PER_NOTIFICATION)
    groupLabels: dict[Text, Text] = Field(default_factory=dict)
    commonLabels: dict[Text, Text] = Field(default_factory=dict)
    commonAnnotations: dict[Text, Text] = Field(default_factory=dict)
    externalURL: Text | None = None
    groupKey: Text | None = None
    # strict: a boolean (or "3", or 3.0) is not a count of truncated alerts
    truncatedAlerts: Annotated[int, Field(strict=True, ge=0)] = 0


class WebhookResult(BaseModel):
    stored: int
    truncated_alerts: int


class AlertOut(BaseModel):
    id: int
    received_at: datetime
    receiver: str
    status: str
    alertname: str | None
    severity: str | None
    run_id: str | None
    client_id: str | None
    fingerprint: str | None
    starts_at: datetime | None
    ends_at: datetime | None
    generator_url: str | None
    labels: dict[str, str]
    annotations: dict[str, str]


_write = require(Scope.write)


def webhook_access(request: Request) -> None:
    """The webhook token (``FEDSENTINEL_ALERT_WEBHOOK_TOKEN``) or a key with write scope."""
    settings: Settings = request.app.state.settings
    token = settings.alert_webhook_token
    presented = _presented_key(request)
    if token and presented and hmac.compare_digest(presented.encode(), token.encode()):
        return
    if settings.auth_enabled or not token:
        _write(request)
        return
    raise HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        "missing or wrong webhook token: send 'Authorization: Bearer <token>'",
        headers={"WWW-Authenticate": "Bearer"},
    )


@router.post(
    "/webhook",
    response_model=WebhookResult,
    dependencies=[Depends(webhook_access)],
    responses=error_responses(408, 413),
)
def alertmanager_webhook(
    body: AlertmanagerNotification, store: Annotated[Store, Depends(get_store)]
) -> WebhookResult:
    """Receive an Alertmanager notification and store each of its alerts."""
    alerts = [
        NotifiedAlert(
            status=a.status,
            labels=a.labels,
            annotations=a.annotations,
            starts_at=a.startsAt,
            ends_at=a.endsAt,
            fingerprint=a.fingerprint,
            generator_url=a.generatorURL,
        )
        for a in body.alerts
    ]
    with store.write_session() as session:
        stored = save_notification(session, body.receiver, body.groupKey, alerts)
    return WebhookResult(stored=stored, truncated_alerts=body.truncatedAlerts)


@router.get("", response_model=Page[AlertOut], dependencies=[ReadAccess])
def get_alerts(
    paging: Annotated[Paging, Depends()],
    session: Annotated[Session, Depends(read_session)],
    run: Annotated[str | None, Query(max_length=128, pattern=NO_NUL_PATTERN, description="Label `run`.")] = None,
    client: Annotated[
        str | None, Query(max_length=128, pattern=NO_NUL_PATTERN, description="Label `client`.")
    ] = None,
    alertname: Annotated[str | None, Query(max_length=256, pattern=NO_NUL_PATTERN)] = None,
    status_: Annotated[Literal["firing", "resolved"] | None, Query(alias="status")] = None,
    severity: Annotated[str | None, Query(max_length=32, pattern=NO_NUL_PATTERN)] = None,
) -> Page[Any]:
    """Alert notifications received by the webhook, newest first."""
    items, total = list_alerts(
        session,
        AlertFilter(
            run_id=run, client_id=client, alertname=alertname, status=status_, severity=severity
        ),
        paging.offset,
        paging.limit,
    )
    return Page[AlertOut](
        items=[AlertOut(**item) for item in items],
        total=total,
        offset=paging.offset,
        limit=paging.limit,
    )
