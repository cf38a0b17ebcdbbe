"""A real simulated run as the list of records an SDK would send, and a way to post them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from collectors.sink import JsonlWriter, read_records
from simulator import FaultSpec, Scenario, run_scenario

RUN_ID = "worker-test"
ROUNDS = 10


def simulated_stream(
    directory: Path, run_id: str = RUN_ID, rounds: int = ROUNDS
) -> list[dict[str, Any]]:
    """Digits, 10 Dirichlet(0.5) clients: label drift on c002 from round 4, a stale c005 from round 6."""
    scenario = Scenario(
        run_id=run_id, dataset="digits", partition="dirichlet", alpha=0.5, num_clients=10,
        rounds=rounds, model="logreg", seed=11, sketch_dim=32,
        faults=[
            FaultSpec(kind="label_drift", clients=[2], onset_round=4, severity=0.9, options={"target_class": 1}),
            FaultSpec(kind="stale_update", clients=[5], onset_round=6),
        ],
    )  # fmt: skip
    path = directory / f"{run_id}.jsonl"
    with JsonlWriter(path) as out:
        run_scenario(scenario, out, progress=False)
    return [record for _, record in read_records(path)]


def post_record(http: Any, record: dict[str, Any]) -> Any:
    """POST one record (TestClient or httpx.Client); fail the test on anything but 200/201."""
    op, run = record["op"], record["run_id"]
    path = {
        "register_run": "/api/v1/runs",
        "report": f"/api/v1/runs/{run}/rounds/{record.get('round')}/reports",
        "close_round": f"/api/v1/runs/{run}/rounds/{record.get('round')}/close",
    }[op]
    response = http.post(
        path,
        content=json.dumps(record["body"]).encode(),
        headers={"content-type": "application/json"},
    )
    assert response.status_code in (200, 201), response.text
    return response


def findings_signature(http: Any, run_id: str) -> list[tuple]:
    """Every finding of a run, as comparable tuples (scores to 9 decimals)."""
    items = http.get(f"/api/v1/runs/{run_id}/findings", params={"limit": 1000}).json()["items"]
    return sorted(
        (f["kind"], f["client_id"], f["first_round"], f["last_round"], f["status"], f["severity"],
         None if f["score"] is None else round(f["score"], 9), f["message"])
        for f in items
    )  # fmt: skip
