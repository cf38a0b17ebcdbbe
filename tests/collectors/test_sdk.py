"""The SDK against a real uvicorn server: batching, retries, spooling across an outage."""

from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path

import pytest
from sqlalchemy import select

from collectors import MonitorClient, MonitorError
from collectors.client import FlushResult, ServiceUnavailable
from monitor.store import Store
from monitor.store.tables import ClientReportRow, RoundRow
from tests.factories import close_body, report, run_spec

CLIENTS = [f"c{i}" for i in range(7)]


def _round_reports(rnd: int) -> list[dict]:
    return [report(cid, seed=rnd * 100 + i) for i, cid in enumerate(CLIENTS)]


def _fast_client(url: str, spool: Path | None, **kw: object) -> MonitorClient:
    kw.setdefault("probe_interval_seconds", 0)
    return MonitorClient(url, spool_dir=spool, batch_size=3, max_retries=2,
                         backoff_base_seconds=0.01, backoff_max_seconds=0.05, timeout_seconds=5, **kw)


@pytest.mark.e2e
def test_outage_is_spooled_and_replayed_exactly_once_in_order(service_factory, database_url, tmp_path) -> None:
    service = service_factory(database_url)
    sent_order: list[tuple[int, str]] = []
    with _fast_client(service.url, tmp_path / "spool") as sdk:
        sdk.register_run(run_spec(expected_clients=len(CLIENTS)))

        def play(rnd: int) -> None:
            reports = _round_reports(rnd)
            sdk.report("run-1", rnd, reports)
            sent_order.extend((rnd, r["client_id"]) for r in reports)
            sdk.close_round("run-1", rnd, close_body(global_eval_accuracy=rnd / 100))

        for rnd in (1, 2, 3):
            play(rnd)
        assert sdk.pending() == 0
        service.stop()
        for rnd in (4, 5, 6):
            play(rnd)  # the service is down: nothing raises, everything is spooled
        assert sdk.pending() == 3 * (3 + 1)  # 7 reports in batches of 3 -> 3 batches, plus the close
        service.start()
        play(7)
        assert sdk.pending() == 0

    store = Store(database_url)
    with store.read_session() as session:
        rows = session.execute(select(ClientReportRow.round, ClientReportRow.client_id).order_by(ClientReportRow.id)).all()
        closed = session.execute(select(RoundRow.round).where(RoundRow.status == "closed").order_by(RoundRow.round)).scalars().all()
    store.dispose()
    assert [tuple(r) for r in rows] == sent_order  # every report once, in the order it was produced
    assert closed == list(range(1, 8))


@pytest.mark.e2e
def test_spool_replay_after_a_crash_between_send_and_ack_does_not_duplicate(service_factory, tmp_path) -> None:
    service = service_factory()
    with _fast_client(service.url, tmp_path / "spool") as sdk:
        sdk.register_run(run_spec())
        sdk.report("run-1", 1, _round_reports(1))
        # The same records land in the spool again (as if the process died before trimming it).
        for start in range(0, len(CLIENTS), 3):
            sdk.spool.append({"op": "report", "run_id": "run-1", "round": 1,
                              "body": {"reports": _round_reports(1)[start:start + 3]}})
        assert sdk.flush() == FlushResult(sent=3, left=0)
        sdk.close_round("run-1", 1, close_body())
    import httpx

    rounds = httpx.get(f"{service.url}/api/v1/runs/run-1/rounds").json()["items"]
    assert rounds[0]["reports"] == len(CLIENTS)


@pytest.mark.e2e
def test_client_errors_raise_and_are_not_spooled(service_factory, tmp_path) -> None:
    service = service_factory()
    with _fast_client(service.url, tmp_path / "spool") as sdk:
        with pytest.raises(MonitorError, match="404.*not registered"):
            sdk.report("missing-run", 1, [report()])
        sdk.register_run(run_spec())
        with pytest.raises(MonitorError, match="422") as info:
            sdk.report("run-1", 1, [report(label_histogram=[1.0])])
        assert info.value.status_code == 422
        assert sdk.pending() == 0


def test_without_a_spool_an_outage_raises(tmp_path) -> None:
    from monitor.server import free_port

    with _fast_client(f"http://127.0.0.1:{free_port()}", None) as sdk, pytest.raises(ServiceUnavailable):
        sdk.register_run(run_spec())


class _FlakyHandler(http.server.BaseHTTPRequestHandler):
    """Answers 503 to the first ``failures`` POSTs, then 200; records bodies."""

    failures = 2
    seen: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers["Content-Length"])
        body = json.loads(self.rfile.read(length))
        type(self).seen.append(body)
        code = 503 if type(self).failures > 0 else 200
        type(self).failures -= 1
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


def test_retries_5xx_with_backoff_then_succeeds() -> None:
    """A tiny real HTTP server that fails twice: the SDK retries and sends NaN intact."""
    _FlakyHandler.failures, _FlakyHandler.seen = 2, []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FlakyHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with _fast_client(f"http://127.0.0.1:{server.server_port}", None) as sdk:
            sdk.report("r", 1, [report(update_norm=float("nan"))])
        assert len(_FlakyHandler.seen) == 3
        assert str(_FlakyHandler.seen[-1]["reports"][0]["update_norm"]) == "nan"
    finally:
        server.shutdown()
        server.server_close()


def test_report_batches_large_rounds(service_factory, tmp_path) -> None:
    service = service_factory()
    with MonitorClient(service.url, batch_size=100) as sdk:
        sdk.register_run(run_spec(expected_clients=1000))
        sdk.report("run-1", 1, [report(f"c{i:04d}", seed=i) for i in range(1000)])
        sdk.close_round("run-1", 1, close_body())
    import httpx

    assert httpx.get(f"{service.url}/api/v1/runs/run-1/rounds/1").json()["reports"] == 1000


@pytest.mark.e2e
def test_a_refused_record_in_the_spool_is_set_aside_not_blocking(service_factory, tmp_path) -> None:
    service = service_factory()
    with _fast_client(service.url, tmp_path / "spool") as sdk:
        sdk.register_run(run_spec())
        sdk.spool.append({"op": "report", "run_id": "run-1", "round": 1,
                          "body": {"reports": [report("c1", label_histogram=[1.0])]}})  # 422
        sdk.spool.append({"op": "report", "run_id": "run-1", "round": 1, "body": {"reports": [report("c2")]}})
        sdk.report("run-1", 1, [report("c3")])
        assert sdk.pending() == 0
        rejected = sdk.spool.rejected_path.read_text().splitlines()
    import httpx

    assert len(rejected) == 1 and "422" in rejected[0] and "label_histogram" in rejected[0]
    assert httpx.get(f"{service.url}/api/v1/runs/run-1/rounds/1").json()["reports"] == 2


def test_while_the_service_is_known_down_calls_do_not_wait(tmp_path) -> None:
    import time

    from monitor.server import free_port

    url = f"http://127.0.0.1:{free_port()}"
    with MonitorClient(url, spool_dir=tmp_path, max_retries=3, backoff_base_seconds=0.2,
                       probe_interval_seconds=60) as sdk:
        sdk.register_run(run_spec())  # pays the retries once
        start = time.monotonic()
        for rnd in range(1, 21):
            sdk.report("run-1", rnd, [report("c1")])
        assert time.monotonic() - start < 1.0
        assert sdk.pending() == 21
