"""The signal engine through the real app and store: findings on the right client and round,
quiet healthy clients, state kept in the store, and several workers agreeing with one."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from collectors.analysis import wait_for_analysis
from collectors.sink import JsonlWriter, read_records
from monitor.store import Store
from monitor.store.scores import latest_round_scores
from monitor.store.tables import DetectorStateRow, RoundRow
from simulator import FaultSpec, Scenario, run_scenario
from tests.conftest import fresh_pg_database

DRIFTING = "c002"
ONSET = 6
ROUNDS = 12


@pytest.fixture(scope="module")
def stream(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """A real simulated run (digits, 12 clients, Dirichlet 0.5) with label drift on c002 from round 6."""
    scenario = Scenario(
        run_id="engine-test", dataset="digits", partition="dirichlet", alpha=0.5, num_clients=12,
        rounds=ROUNDS, model="logreg", seed=3, sketch_dim=32,
        faults=[FaultSpec(kind="label_drift", clients=[2], onset_round=ONSET, severity=0.9,
                          options={"target_class": 1})],
    )
    path = tmp_path_factory.mktemp("stream") / "run.jsonl"
    with JsonlWriter(path) as out:
        run_scenario(scenario, out, progress=False)
    return [record for _, record in read_records(path)]


def _post(api, record: dict):  # type: ignore[no-untyped-def]
    op, run = record["op"], record["run_id"]
    path = {"register_run": "/api/v1/runs",
            "report": f"/api/v1/runs/{run}/rounds/{record.get('round')}/reports",
            "close_round": f"/api/v1/runs/{run}/rounds/{record.get('round')}/close"}[op]
    body = json.dumps(record["body"]).encode()
    response = api.post(path, content=body, headers={"content-type": "application/json"})
    assert response.status_code in (200, 201), response.text
    return response


def test_label_drift_is_found_on_the_right_client_from_the_right_round(api, store, stream) -> None:
    for record in stream:
        _post(api, record)
    wait_for_analysis(api, "engine-test", ROUNDS)
    findings = api.get("/api/v1/runs/engine-test/findings", params={"limit": 1000}).json()["items"]
    drift = [f for f in findings if f["kind"] in ("label_drift", "data_drift") and f["client_id"] == DRIFTING]
    assert drift, findings
    assert min(f["first_round"] for f in drift) in (ONSET, ONSET + 1)
    assert "JS" in drift[0]["message"] and DRIFTING in drift[0]["message"]
    others = [f for f in findings if f["kind"] in ("label_drift", "feature_drift", "data_drift")
              and f["client_id"] != DRIFTING]
    assert others == []  # non-IID but stable clients do not look like drift
    with store.read_session() as session:
        state = session.get(DetectorStateRow, "engine-test")
        analysed = session.execute(select(RoundRow.round).where(RoundRow.analyzed.is_(True))).scalars().all()
        scores = latest_round_scores(session, "engine-test")
    assert state is not None and state.last_round == ROUNDS and state.state
    assert sorted(analysed) == list(range(1, ROUNDS + 1))
    assert scores is not None and scores.round == ROUNDS
    i = scores.client_ids.index(DRIFTING)
    js = scores.client_scores["label_drift_js_reference"]
    assert js[i] == max(js[j] for j in range(len(js)) if js[j] == js[j])


def test_findings_are_one_per_problem_not_one_per_round(api, stream) -> None:
    for record in stream:
        _post(api, record)
    wait_for_analysis(api, "engine-test")
    findings = api.get("/api/v1/runs/engine-test/findings", params={"limit": 1000}).json()["items"]
    keys = [(f["kind"], f["client_id"]) for f in findings if f["status"] == "open"]
    assert len(keys) == len(set(keys))


def _findings_signature(url: str, run_id: str) -> list[tuple]:
    with httpx.Client(base_url=url, timeout=60) as http:
        wait_for_analysis(http, run_id)
    items = httpx.get(f"{url}/api/v1/runs/{run_id}/findings", params={"limit": 1000}).json()["items"]
    return sorted(
        (f["kind"], f["client_id"], f["first_round"], f["last_round"], f["status"], f["severity"],
         None if f["score"] is None else round(f["score"], 9), f["message"])
        for f in items
    )


def _replay_concurrently(url: str, stream: list[dict]) -> None:
    """Reports of a round go out in parallel (so both workers serve them); closes in order."""
    with httpx.Client(base_url=url, timeout=60) as http, ThreadPoolExecutor(4) as pool:
        for record in stream:
            if record["op"] == "report":
                reports = record["body"]["reports"]
                parts = [reports[i::3] for i in range(3)]
                futures = [pool.submit(_post, http, {**record, "body": {"reports": p}}) for p in parts if p]
                for f in futures:
                    f.result()
            else:
                _post(http, record)


@pytest.mark.postgres
@pytest.mark.e2e
def test_two_workers_over_postgres_give_the_same_findings_as_one(service_factory, stream, tmp_path: Path) -> None:
    with fresh_pg_database() as one_db, fresh_pg_database() as two_db:
        single = service_factory(one_db, workers=1)
        double = service_factory(two_db, workers=2)
        _replay_concurrently(single.url, stream)
        _replay_concurrently(double.url, stream)
        expected = _findings_signature(single.url, "engine-test")
        assert expected, "the stream must produce findings for this comparison to mean anything"
        assert _findings_signature(double.url, "engine-test") == expected
        stores = [Store(one_db), Store(two_db)]
        try:
            latest = []
            for s in stores:
                with s.read_session() as session:
                    latest.append(latest_round_scores(session, "engine-test"))
            assert latest[0].round == latest[1].round == ROUNDS
            for name, values in latest[0].client_scores.items():
                assert latest[1].client_scores[name].tolist() == pytest.approx(values.tolist(), nan_ok=True), name
        finally:
            for s in stores:
                s.dispose()
        single.stop()
        double.stop()


def test_new_findings_reach_the_direct_notifier(tmp_path: Path, stream) -> None:
    """FEDSENTINEL_NOTIFY_WEBHOOK_URL set: the service posts new findings (for setups without Prometheus)."""
    import http.server
    import threading

    from monitor.server import ServerThread
    from monitor.settings import Settings

    received: list[dict] = []

    class Recorder(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    hook = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    try:
        settings = Settings(data_dir=tmp_path, port=0,
                            notify_webhook_url=f"http://127.0.0.1:{hook.server_port}/hook")
        with ServerThread(settings) as url, httpx.Client(base_url=url, timeout=60) as http:
            for record in stream:
                _post(http, record)
            wait_for_analysis(http, "engine-test", ROUNDS)
        # leaving the server drains the notifier
        alerts = [a for body in received for a in body["alerts"]]
        drifted = [a for a in alerts if a["labels"].get("client") == DRIFTING
                   and a["labels"].get("kind") in ("label_drift", "data_drift")]
        assert drifted, alerts
        assert all(a["labels"]["run"] == "engine-test" for a in alerts)
    finally:
        hook.shutdown()
        hook.server_close()


def test_rounds_closed_while_analysis_was_unavailable_are_caught_up(store, stream) -> None:
    """A close whose analysis did not happen (crash, failure) is analysed by the next worker's catch-up."""
    from fastapi.testclient import TestClient

    from monitor.app import create_app
    from monitor.engine import Engine
    from monitor.settings import Settings

    app = create_app(Settings(analysis="external"), store=store)  # no worker: nothing analyses
    with TestClient(app) as api:
        for record in stream:
            _post(api, record)
    with store.read_session() as session:
        assert not session.execute(select(RoundRow).where(RoundRow.analyzed.is_(True))).first()
        status = api.get("/api/v1/runs/engine-test/analysis").json()
        assert status["lag_rounds"] == ROUNDS and status["pending_rounds"] == list(range(1, ROUNDS + 1))
    done = Engine(store).catch_up()
    assert done == {"engine-test": list(range(1, ROUNDS + 1))}
