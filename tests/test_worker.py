"""Analysis off the request path: the close returns before the analysis, workers analyse
each round exactly once and in order, a worker that dies mid-round leaves the round to the
next one, the lag is exported, and the findings equal those of analysing at every close."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from collectors.analysis import AnalysisTimeout, wait_for_analysis
from monitor.app import create_app
from monitor.engine import Engine, build_engine
from monitor.settings import Settings
from monitor.store import Store
from monitor.store.scores import round_scores
from monitor.store.tables import RoundRow
from monitor.worker import AnalysisWorker
from tests.conftest import ServiceProcess, fresh_pg_database
from tests.streams import ROUNDS, RUN_ID, findings_signature, post_record, simulated_stream

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def stream(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    return simulated_stream(tmp_path_factory.mktemp("stream"))


def _external_app(store: Store, tmp_path: Path, **settings: object) -> TestClient:
    """The service with no analysis of its own (``FEDSENTINEL_ANALYSIS=external``)."""
    return TestClient(
        create_app(Settings(data_dir=tmp_path, analysis="external", **settings), store=store)
    )


@pytest.fixture(scope="module")
def reference(stream: list[dict], tmp_path_factory: pytest.TempPathFactory) -> list[tuple]:
    return _synchronous_reference(stream, tmp_path_factory.mktemp("reference"))


def _synchronous_reference(stream: list[dict], tmp_path: Path) -> list[tuple]:
    """The old request path: each round analysed right after its close, before the next report."""
    store = Store(f"sqlite:///{tmp_path / 'reference.db'}")
    store.create_schema()
    engine = Engine(store)
    try:
        with _external_app(store, tmp_path) as api:
            for record in stream:
                post_record(api, record)
                if record["op"] == "close_round":
                    assert engine.analyze_pending(record["run_id"]) == [record["round"]]
            return findings_signature(api, RUN_ID)
    finally:
        store.dispose()


def test_the_close_returns_before_the_analysis_and_a_worker_finds_the_same_as_the_synchronous_path(
    store: Store, stream: list[dict], tmp_path: Path, reference: list[tuple]
) -> None:
    with _external_app(store, tmp_path) as api:
        for record in stream:
            post_record(api, record)
        status = api.get(f"/api/v1/runs/{RUN_ID}/analysis").json()
        assert status["lag_rounds"] == ROUNDS and status["pending_rounds"] == list(
            range(1, ROUNDS + 1)
        )
        assert status["last_analyzed_round"] is None and status["oldest_pending_closed_at"]
        assert api.get(f"/api/v1/runs/{RUN_ID}/findings").json()["total"] == 0
        assert api.get(f"/api/v1/runs/{RUN_ID}/rounds/1").json()["analyzed"] is False
        with pytest.raises(AnalysisTimeout):
            wait_for_analysis(api, RUN_ID, 1, timeout_seconds=0.2)

        assert AnalysisWorker(build_engine(store, Settings())).run_once() == ROUNDS

        status = wait_for_analysis(api, RUN_ID, timeout_seconds=0)
        assert status["rounds_analyzed"] == ROUNDS and status["last_analyzed_round"] == ROUNDS
        assert api.get(f"/api/v1/runs/{RUN_ID}/rounds/1").json()["analyzed_at"]
        found = findings_signature(api, RUN_ID)
    assert any(f[0] == "label_drift" and f[1] == "c002" for f in found), found
    assert found == reference


def test_the_service_analyses_in_the_background_by_default(
    store: Store, stream: list[dict], tmp_path: Path, reference: list[tuple]
) -> None:
    app = create_app(Settings(data_dir=tmp_path), store=store)
    with TestClient(app) as api:
        for record in stream:
            post_record(api, record)
        wait_for_analysis(api, RUN_ID, ROUNDS, timeout_seconds=120)
        assert findings_signature(api, RUN_ID) == reference
    assert not any(
        t.name == "fedsentinel-analysis" for t in threading.enumerate()
    )  # stopped with the app


def test_competing_workers_analyse_every_round_once_and_in_order(
    store: Store, stream: list[dict], tmp_path: Path, reference: list[tuple]
) -> None:
    """Four worker threads race over one store while the rounds are being ingested and closed."""
    analysed: list[tuple[str, int]] = []
    lock = threading.Lock()

    def record(run_id: str, rnd: int) -> None:
        with lock:
            analysed.append((run_id, rnd))

    workers = [
        AnalysisWorker(Engine(store, after_round=record), poll_seconds=0.01, name=f"w{i}").start()
        for i in range(4)
    ]
    try:
        with _external_app(store, tmp_path) as api:
            for record_ in stream:
                post_record(api, record_)
                if record_["op"] == "close_round":
                    for w in workers:
                        w.notify()
            wait_for_analysis(api, RUN_ID, timeout_seconds=120)
            found = findings_signature(api, RUN_ID)
    finally:
        for w in workers:
            w.stop()
    assert analysed == [(RUN_ID, r) for r in range(1, ROUNDS + 1)]
    assert sum(w.analysed for w in workers) == ROUNDS and not any(w.failures for w in workers)
    assert found == reference


CLAIM_AND_HANG = textwrap.dedent(
    """
    import sys, time
    from monitor.engine import Engine
    from monitor.store import Store
    from monitor.store.round_input import load_round_input
    from monitor.store.writes import load_run_config
    from monitor.store.tables import RoundRow
    store = Store(sys.argv[1])
    engine = Engine(store)
    engine._ensure_state(sys.argv[2])
    with store.write_session() as session:
        state = engine._lock_state(session, sys.argv[2], False)     # the claim
        row = session.get(RoundRow, (sys.argv[2], 1))
        load_round_input(session, load_run_config(session, sys.argv[2]), row)
        print("claimed", flush=True)
        time.sleep(600)                                            # killed here, mid-analysis
    """
)


def test_a_round_claimed_by_a_worker_that_dies_is_analysed_by_the_next(
    store: Store, stream: list[dict], tmp_path: Path
) -> None:
    with _external_app(store, tmp_path) as api:
        for record in stream[:3]:  # registration, round 1's reports, its close
            post_record(api, record)
    proc = subprocess.Popen(
        [sys.executable, "-c", CLAIM_AND_HANG, store.url, RUN_ID],
        stdout=subprocess.PIPE, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "claimed"
        if store.is_postgres:  # the claim is held: a worker skips the run instead of waiting
            started = time.monotonic()
            assert AnalysisWorker(Engine(store)).run_once() == 0
            assert time.monotonic() - started < 10
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert AnalysisWorker(Engine(store)).run_once() == 1
    with store.read_session() as session:
        row = session.get(RoundRow, (RUN_ID, 1))
        assert row is not None and row.analyzed
        assert round_scores(session, RUN_ID, 1) is not None


def test_the_lag_is_exported_until_the_analysis_catches_up(
    store: Store, stream: list[dict], tmp_path: Path
) -> None:
    def sample(text: str, name: str) -> float:
        return float(
            next(line for line in text.splitlines() if line.startswith(name + " ")).split()[1]
        )

    with _external_app(store, tmp_path) as api:
        for record in stream:
            post_record(api, record)
        time.sleep(0.05)  # the oldest close is measurably old
        text = api.get("/metrics").text
        assert sample(text, "fedsentinel_analysis_lag_rounds") == ROUNDS
        assert sample(text, "fedsentinel_analysis_pending_rounds") == ROUNDS
        assert sample(text, "fedsentinel_analysis_oldest_pending_age_seconds") > 0
        AnalysisWorker(Engine(store)).run_once()
        text = api.get("/metrics").text
        assert sample(text, "fedsentinel_analysis_lag_rounds") == 0
        assert sample(text, "fedsentinel_analysis_oldest_pending_age_seconds") == 0
        assert api.get("/api/v1/runs/nope/analysis").status_code == 404


# -- several `fedsentinel worker` processes over PostgreSQL ---------------------------------


def _start_worker(database_url: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "FEDSENTINEL_DATABASE_URL": database_url,
           "FEDSENTINEL_ANALYSIS_POLL_SECONDS": "0.05"}  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-m", "monitor", "worker"], env=env, cwd=REPO,
        stdout=log.open("ab"), stderr=subprocess.STDOUT,
    )  # fmt: skip


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@pytest.mark.postgres
@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_three_worker_processes_over_postgres_give_the_same_findings_as_one(
    stream: list[dict], tmp_path: Path
) -> None:
    results = []
    for n_workers in (1, 3):
        with fresh_pg_database() as url:
            service = ServiceProcess({"FEDSENTINEL_DATA_DIR": str(tmp_path), "FEDSENTINEL_DATABASE_URL": url,
                                      "FEDSENTINEL_ANALYSIS": "external"})  # fmt: skip
            workers: list[subprocess.Popen] = []
            try:
                service.start(timeout=120)  # creates the schema; then the workers
                workers = [
                    _start_worker(url, tmp_path / f"worker-{n_workers}-{i}.log")
                    for i in range(n_workers)
                ]
                with httpx.Client(base_url=service.url, timeout=60) as http:
                    for record in stream:
                        post_record(http, record)
                    wait_for_analysis(http, RUN_ID, timeout_seconds=180)
                    results.append(findings_signature(http, RUN_ID))
                store = Store(url)
                try:
                    with store.read_session() as session:
                        analysed = (
                            session.execute(select(RoundRow.analyzed_at).order_by(RoundRow.round))
                            .scalars()
                            .all()
                        )
                        last = round_scores(session, RUN_ID, ROUNDS)
                    assert all(analysed) and analysed == sorted(analysed)  # in round order
                    results.append({k: v.tolist() for k, v in last.client_scores.items()})  # type: ignore[union-attr]
                finally:
                    store.dispose()
            finally:
                _stop(workers)
                service.stop()
    one_findings, one_scores, three_findings, three_scores = results
    assert one_findings and three_findings == one_findings
    for name, values in one_scores.items():
        assert three_scores[name] == pytest.approx(values, nan_ok=True), name
