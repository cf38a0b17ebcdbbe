"""The SDK's promises: ``flush(timeout=...)`` rides out an outage, and what ``report()`` returned from survives SIGKILL."""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from collectors import FlushResult, MonitorClient
from monitor.server import free_port
from monitor.store import Store
from monitor.store.tables import ClientReportRow
from tests.collectors.producer import CLIENTS, RUN_ID
from tests.factories import report, run_spec

REPO = Path(__file__).resolve().parents[2]


def _sdk(url: str, spool: Path, **kw: object) -> MonitorClient:
    return MonitorClient(
        url,
        spool_dir=spool,
        batch_size=3,
        max_retries=2,
        backoff_base_seconds=0.01,
        backoff_max_seconds=0.05,
        timeout_seconds=5,
        probe_interval_seconds=0,
        **kw,
    )


def test_flush_never_raises_and_says_how_many_records_are_left(tmp_path) -> None:
    with _sdk(f"http://127.0.0.1:{free_port()}", tmp_path) as sdk:  # nobody listens there
        sdk.register_run(run_spec())
        sdk.report("run-1", 1, [report("c1"), report("c2")])
        assert sdk.flush() == FlushResult(sent=0, left=2)
        result = sdk.flush(timeout=0.3)
        assert result == FlushResult(sent=0, left=2) and not result.done


@pytest.mark.e2e
def test_flush_with_a_timeout_waits_until_the_service_is_back(service_factory, tmp_path) -> None:
    service = service_factory()
    with _sdk(service.url, tmp_path / "spool") as sdk:
        sdk.register_run(run_spec())
        service.stop()
        for rnd in (1, 2, 3):
            sdk.report(
                "run-1", rnd, [report(f"c{i}", seed=i) for i in range(4)]
            )  # 2 batches per round
        assert sdk.pending() == 6
        restarter = threading.Thread(target=lambda: (time.sleep(0.5), service.start()))
        restarter.start()
        result = sdk.flush(timeout=120)
        restarter.join()
    assert result == FlushResult(sent=6, left=0)
    import httpx

    rounds = httpx.get(f"{service.url}/api/v1/runs/run-1/rounds").json()["items"]
    assert [r["reports"] for r in rounds] == [4, 4, 4]


class _DiesMidReplay(http.server.BaseHTTPRequestHandler):
    """Acknowledges 2 POSTs, answers 503 to the next 8 (the service died again), then recovers."""

    answers: list[int] = []
    stored: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        code = type(self).answers.pop(0) if type(self).answers else 200
        if code == 200:
            type(self).stored.append(body)
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


def test_flush_rides_out_a_service_that_dies_again_while_the_spool_drains(tmp_path) -> None:
    _DiesMidReplay.answers, _DiesMidReplay.stored = [200, 200] + [503] * 8, []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _DiesMidReplay)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with _sdk(f"http://127.0.0.1:{server.server_port}", tmp_path) as sdk:
            for i in range(5):
                sdk.spool.append(
                    {
                        "op": "report",
                        "run_id": "r",
                        "round": 1,
                        "body": {"reports": [report(f"c{i}")]},
                    }
                )
            result = sdk.flush(timeout=60)  # one pass gives up after 3 attempts; flush keeps going
    finally:
        server.shutdown()
        server.server_close()
    assert result == FlushResult(sent=5, left=0)
    assert [b["reports"][0]["client_id"] for b in _DiesMidReplay.stored] == [
        f"c{i}" for i in range(5)
    ]


def _acks(path: Path) -> list[tuple[int, str]]:
    if not path.exists():
        return []
    rows = [line.split() for line in path.read_text().splitlines()]
    return [(int(r), c) for r, c in rows if len([r, c]) == 2]


def _wait(predicate, proc: subprocess.Popen, timeout: float = 90) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"producer exited early with {proc.returncode}"
        assert time.monotonic() < deadline, "timed out waiting for the producer"
        time.sleep(0.005)


@pytest.mark.e2e
@pytest.mark.slow
def test_sigkill_of_the_producer_loses_no_acknowledged_report(
    service_factory, database_url, tmp_path
) -> None:
    """Kill the reporting process while the service is up, while it is down (spooling) and while
    the spool drains; restart it each time on the same spool. Every report ``report()`` returned
    from is stored, exactly once, with the content that was sent."""
    rounds = 30
    service = service_factory(database_url)
    spool, acks = tmp_path / "spool", tmp_path / "acks.txt"
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}

    def producer() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "tests.collectors.producer", service.url,
                                 str(spool), str(acks), str(rounds)], cwd=REPO, env=env)  # fmt: skip

    def kill(proc: subprocess.Popen) -> None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)

    proc = producer()  # 1: the service is up
    _wait(lambda: len(_acks(acks)) >= 3 * len(CLIENTS), proc)
    kill(proc)
    service.stop()  # 2: the service is down, the SDK spools
    before = len(_acks(acks))
    proc = producer()
    _wait(lambda: len(_acks(acks)) >= before + 8 * len(CLIENTS), proc)
    kill(proc)
    assert (spool / "spool.jsonl").stat().st_size > 0
    service.start()  # 3: the spool drains (the offset file exists only while it does)
    proc = producer()
    _wait(lambda: (spool / "spool.offset").exists() or not (spool / "spool.jsonl").exists(), proc)
    kill(proc)
    proc = producer()  # 4: to the end
    assert proc.wait(timeout=180) == 0

    store = Store(database_url)
    with store.read_session() as session:
        rows = session.execute(
            select(
                ClientReportRow.round, ClientReportRow.client_id, ClientReportRow.num_examples
            ).where(ClientReportRow.run_id == RUN_ID)
        ).all()
    store.dispose()
    stored = [(r, c) for r, c, _ in rows]
    assert len(stored) == len(set(stored))  # exactly once
    assert set(_acks(acks)) <= set(stored)  # nothing acknowledged is lost
    assert len(stored) == rounds * len(CLIENTS)
    for rnd, cid, num_examples in rows:  # as sent (factories.report: 100 + seed)
        assert num_examples == 100 + rnd * 100 + CLIENTS.index(cid)
