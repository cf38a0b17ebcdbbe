"""The Alertmanager webhook receiver and the alert listing."""

from __future__ import annotations

from typing import Any

API = "/api/v1"


def notification(status: str = "firing", **labels: str) -> dict[str, Any]:
    """An Alertmanager 0.25 webhook body (version 4) with one alert."""
    alert_labels = {"alertname": "FLClientDataDrift", "severity": "warning", "run": "r1", "client": "c7",
                    "instance": "fedsentinel:8080", "job": "fedsentinel", **labels}  # fmt: skip
    return {
        "receiver": "fedsentinel-webhook",
        "status": status,
        "alerts": [
            {
                "status": status,
                "labels": alert_labels,
                "annotations": {
                    "summary": "Run r1: client c7 data drifted for 3 rounds",
                    "runbook_url": "docs/alerts.md#flclientdatadrift",
                },
                "startsAt": "2026-01-24T06:00:00.123Z",
                "endsAt": "0001-01-01T00:00:00Z" if status == "firing" else "2026-01-24T06:05:00Z",
                "generatorURL": "http://prometheus:9090/graph?g0.expr=...",
                "fingerprint": "3f2a9c0e1b7d5a44",
            }
        ],
        "groupLabels": {"alertname": "FLClientDataDrift", "run": "r1", "client": "c7"},
        "commonLabels": alert_labels,
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "version": "4",
        "groupKey": '{}/{severity="warning"}:{alertname="FLClientDataDrift", client="c7", run="r1"}',
        "truncatedAlerts": 0,
    }


def test_webhook_stores_firing_then_resolved_and_lists_them(api) -> None:  # type: ignore[no-untyped-def]
    assert api.post(f"{API}/alerts/webhook", json=notification()).json() == {
        "stored": 1,
        "truncated_alerts": 0,
    }
    api.post(f"{API}/alerts/webhook", json=notification(client="c8"))
    api.post(f"{API}/alerts/webhook", json=notification("resolved"))
    page = api.get(f"{API}/alerts", params={"run": "r1", "client": "c7"}).json()
    assert page["total"] == 2
    resolved, firing = page["items"]  # newest first
    assert (resolved["status"], firing["status"]) == ("resolved", "firing")
    assert firing["ends_at"] is None and resolved["ends_at"].startswith("2026-01-24T06:05:00")
    assert firing["fingerprint"] == resolved["fingerprint"] == "3f2a9c0e1b7d5a44"
    assert firing["alertname"] == "FLClientDataDrift" and firing["severity"] == "warning"
    assert firing["labels"]["job"] == "fedsentinel"
    assert firing["annotations"]["summary"].startswith("Run r1: client c7")
    assert firing["receiver"] == "fedsentinel-webhook"
    assert api.get(f"{API}/alerts", params={"status": "firing"}).json()["total"] == 2
    assert api.get(f"{API}/alerts", params={"alertname": "Nope"}).json()["total"] == 0
    paged = api.get(f"{API}/alerts", params={"limit": 1, "offset": 1}).json()
    assert paged["total"] == 3 and len(paged["items"]) == 1


def test_webhook_rejects_a_malformed_body(api) -> None:  # type: ignore[no-untyped-def]
    body = notification()
    body["alerts"][0]["status"] = "exploded"
    assert api.post(f"{API}/alerts/webhook", json=body).status_code == 422
    assert api.post(f"{API}/alerts/webhook", json={"receiver": "x"}).status_code == 422
    assert api.get(f"{API}/alerts").json()["total"] == 0


def test_webhook_needs_write_scope_or_the_webhook_token(app_factory) -> None:  # type: ignore[no-untyped-def]
    api = app_factory(api_keys={"w": ["write"], "r": ["read"]}, alert_webhook_token="am-secret")
    url = f"{API}/alerts/webhook"
    assert api.post(url, json=notification()).status_code == 401
    assert (
        api.post(url, json=notification(), headers={"Authorization": "Bearer r"}).status_code == 403
    )
    assert (
        api.post(url, json=notification(), headers={"Authorization": "Bearer w"}).status_code == 200
    )
    assert (
        api.post(
            url, json=notification(), headers={"Authorization": "Bearer am-secret"}
        ).status_code
        == 200
    )
    # the webhook token is for the webhook only
    assert (
        api.get(f"{API}/alerts", headers={"Authorization": "Bearer am-secret"}).status_code == 401
    )
    listing = api.get(f"{API}/alerts", headers={"X-API-Key": "r"})
    assert listing.status_code == 200 and listing.json()["total"] == 2


def test_token_alone_protects_the_webhook_of_an_open_service(app_factory) -> None:  # type: ignore[no-untyped-def]
    api = app_factory(alert_webhook_token="am-secret")
    assert api.post(f"{API}/alerts/webhook", json=notification()).status_code == 401
    ok = api.post(
        f"{API}/alerts/webhook", json=notification(), headers={"Authorization": "Bearer am-secret"}
    )
    assert ok.status_code == 200
