"""The direct notifier against a real local HTTP server (and against fedsentinel's own webhook)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from monitor.findings import FindingRecord
from monitor.notifier import WebhookNotifier, notifier_from_settings
from monitor.server import ServerThread, free_port
from monitor.settings import Settings


class Receiver:
    """An HTTP server that answers the first ``failures`` POSTs with 503, then 200."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.bodies: list[dict] = []
        self.attempts = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.attempts += 1
                code = 503 if outer.attempts <= outer.failures else 200
                if code == 200:
                    outer.bodies.append(json.loads(body))
                self.send_response(code)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made: list[Receiver] = []

    def start(failures: int = 0) -> Receiver:
        r = Receiver(failures)
        r.thread.start()
        made.append(r)
        return r

    yield start  # type: ignore[misc]
    for r in made:
        r.server.shutdown()
        r.server.server_close()


def finding(kind: str = "label_drift", client: str | None = "c3") -> FindingRecord:
    return FindingRecord(kind=kind, severity="critical", client_id=client, first_round=4, last_round=4,
                         score=0.8, threshold=0.29, message=f"client {client}: class 1 share 6% -> 91%")  # fmt: skip


def test_posts_findings_as_an_alertmanager_notification(receiver) -> None:  # type: ignore[no-untyped-def]
    r = receiver()
    notifier = WebhookNotifier(r.url)
    try:
        notifier("run-1", [finding(), finding("participation_drop", None)])
        notifier("run-1", [])  # nothing to say: nothing sent
        assert notifier.flush(10)
    finally:
        notifier.close()
    assert notifier.sent == 1 and r.attempts == 1
    body = r.bodies[0]
    assert body["version"] == "4" and body["status"] == "firing"
    client_alert, run_alert = body["alerts"]
    assert client_alert["labels"] == {"alertname": "FLFinding", "kind": "label_drift", "severity": "critical",
                                      "run": "run-1", "client": "c3"}  # fmt: skip
    assert "client" not in run_alert["labels"]
    assert client_alert["annotations"]["description"] == "client c3: class 1 share 6% -> 91%"
    assert client_alert["endsAt"] == "0001-01-01T00:00:00Z"


def test_retries_server_errors_then_delivers(receiver) -> None:  # type: ignore[no-untyped-def]
    r = receiver(failures=2)
    notifier = WebhookNotifier(r.url, max_retries=3, backoff_base_seconds=0.01)
    notifier.notify("run-1", [finding()])
    notifier.close()
    assert (r.attempts, notifier.sent, notifier.failed) == (3, 1, 0)
    assert len(r.bodies) == 1


def test_gives_up_without_raising_when_nobody_listens() -> None:
    notifier = WebhookNotifier(
        f"http://127.0.0.1:{free_port()}/hook", max_retries=2, backoff_base_seconds=0.01
    )
    notifier.notify("run-1", [finding()])
    notifier.close()
    assert (notifier.sent, notifier.failed) == (0, 1)


def test_fedsentinels_own_webhook_accepts_the_notifier(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import httpx

    with ServerThread(Settings(data_dir=tmp_path, port=0)) as url:
        notifier = notifier_from_settings(
            Settings(data_dir=tmp_path, notify_webhook_url=f"{url}/api/v1/alerts/webhook")
        )
        assert notifier is not None
        notifier("run-9", [finding(client="c1")])
        notifier.close()
        assert notifier.sent == 1
        page = httpx.get(f"{url}/api/v1/alerts", params={"run": "run-9", "client": "c1"}).json()
    assert page["total"] == 1 and page["items"][0]["alertname"] == "FLFinding"
    assert notifier_from_settings(Settings(data_dir=tmp_path)) is None
