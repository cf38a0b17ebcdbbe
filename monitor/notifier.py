"""Direct notifier: post newly opened findings to a webhook, for setups without Prometheus.

The body is an Alertmanager version-4 notification, so anything that accepts
Alertmanager webhooks accepts it, fedsentinel's own
``POST /api/v1/alerts/webhook`` included. Each finding becomes one firing
alert labelled ``alertname="FLFinding"``, ``kind``, ``severity``, ``run`` and
``client`` (when it has one)::

    notifier = notifier_from_settings(settings)      # None without notify_webhook_url
    engine = Engine(store, on_findings_opened=notifier)  # notifier(run_id, findings)
    ...
    notifier.close()                                  # drains the queue

Posting happens on a background thread with retries (exponential backoff on
transport errors, 429 and 5xx), so the round-close request that opened the
findings never waits for the webhook; a notification that still fails after
the retries is logged and dropped, never raised.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import httpx

from monitor.findings import FindingRecord
from monitor.settings import Settings

__all__ = ["WebhookNotifier", "notifier_from_settings", "findings_payload"]

log = logging.getLogger("fedsentinel.notifier")
RECEIVER = "fedsentinel-notifier"


def _fingerprint(run_id: str, kind: str, client_id: str | None) -> str:
    return hashlib.sha256(f"{run_id}\0{kind}\0{client_id or ''}".encode()).hexdigest()[:16]


def findings_payload(
    run_id: str, findings: Sequence[FindingRecord], now: datetime | None = None
) -> dict[str, Any]:
    """An Alertmanager v4 webhook body with one firing alert per finding."""
    now = now or datetime.now(UTC)
    alerts = []
    for f in findings:
        labels = {"alertname": "FLFinding", "kind": f.kind, "severity": f.severity, "run": run_id}
        if f.client_id is not None:
            labels["client"] = f.client_id
        where = f"client {f.client_id}" if f.client_id is not None else "the federation"
        alerts.append(
            {
                "status": "firing",
                "labels": labels,
                "annotations": {
                    "summary": f"Run {run_id}: {f.kind} on {where} since round {f.first_round}",
                    "description": f.message,
                    "runbook_url": "docs/alerts.md#flfinding",
                },
                "startsAt": now.isoformat().replace("+00:00", "Z"),
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "",
                "fingerprint": _fingerprint(run_id, f.kind, f.client_id),
            }
        )
    common = {"alertname": "FLFinding", "run": run_id}
    return {
        "version": "4",
        "groupKey": f'{{}}:{{run="{run_id}"}}',
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": RECEIVER,
        "groupLabels": {"run": run_id},
        "commonLabels": common,
        "commonAnnotations": {},
        "externalURL": "",
        "alerts": alerts,
    }


class WebhookNotifier:
    """Posts findings to ``url`` from a background thread, with retries.

    Call it as ``notifier(run_id, findings)`` (the engine's
    ``on_findings_opened`` signature) or ``notifier.notify(run_id, findings)``.
    ``sent`` and ``failed`` count notifications; ``flush()`` waits for the
    queue to drain; ``close()`` drains and stops the thread.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        max_retries: int = 4,
        backoff_base_seconds: float = 0.5,
        backoff_max_seconds: float = 10.0,
        timeout_seconds: float = 10.0,
        max_queue: int = 1000,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url
        self.max_retries = max_retries
        self.backoff_base_seconds = backoff_base_seconds
        self.backoff_max_seconds = backoff_max_seconds
        self._http = httpx.Client(timeout=timeout_seconds, headers=headers)
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=max_queue)
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="fedsentinel-notifier", daemon=True)
        self._thread.start()

    def notify(self, run_id: str, findings: Sequence[FindingRecord]) -> None:
        """Queue one notification for ``findings`` (no-op when empty); never blocks or raises."""
        if not findings:
            return
        try:
            self._queue.put_nowait(findings_payload(run_id, findings))
        except queue.Full:
            self.dropped += 1
            log.error("notifier queue full; dropped %d finding(s) of run %s", len(findings), run_id)

    __call__ = notify

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every queued notification was sent or given up; False on timeout."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def close(self, timeout: float = 30.0) -> None:
        self.flush(timeout)
        self._queue.put(None)
        self._thread.join(timeout=timeout)
        self._http.close()

    def _run(self) -> None:
        while True:
            payload = self._queue.get()
            try:
                if payload is None:
                    return
                if self._post(payload):
                    self.sent += 1
                else:
                    self.failed += 1
            except Exception:  # noqa: BLE001  (one bad payload or URL must not stop the thread)
                self.failed += 1
                log.exception("notification to %s failed", self.url)
            finally:
                self._queue.task_done()

    def _post(self, payload: dict[str, Any]) -> bool:
        for attempt in range(self.max_retries + 1):
            try:
                response = self._http.post(self.url, json=payload)
                if response.status_code < 300:
                    return True
                retry = response.status_code == 429 or response.status_code >= 500
                reason = f"HTTP {response.status_code}"
            except httpx.TransportError as exc:
                retry, reason = True, f"{exc.__class__.__name__}: {exc}"
            if not retry or attempt == self.max_retries:
                log.error("notification to %s failed (%s); %d alert(s) dropped",
                          self.url, reason, len(payload["alerts"]))  # fmt: skip
                return False
            delay = min(self.backoff_base_seconds * 2**attempt, self.backoff_max_seconds)
            log.warning("notification to %s failed (%s); retry in %.1f s", self.url, reason, delay)
            time.sleep(delay)
        return False


def notifier_from_settings(settings: Settings) -> WebhookNotifier | None:
    """A notifier posting to ``settings.notify_webhook_url``, or None when it is unset."""
    if not settings.notify_webhook_url:
        return None
    return WebhookNotifier(settings.notify_webhook_url, token=settings.notify_webhook_token)
