"""Query API: runs, run detail + health, rounds (paged), clients (latest), history, findings."""

from __future__ import annotations

import json

import pytest

from collectors.analysis import wait_for_analysis
from monitor.store import Store
from monitor.store.tables import FindingRow
from tests.factories import close_body, report, run_spec

API = "/api/v1"


@pytest.fixture
def populated(api):  # type: ignore[no-untyped-def]
    """Run with 3 clients over 5 rounds; c2 skips round 3 and fails in round 5; rounds 1-4 closed."""
    api.post(f"{API}/runs", json=run_spec())
    for rnd in range(1, 6):
        batch = []
        for i in range(3):
            if i == 2 and rnd == 3:
                continue
            status = "failed" if (i == 2 and rnd == 5) else "ok"
            batch.append(report(f"c{i}", seed=rnd * 10 + i, eval_accuracy=0.5 + rnd / 20, status=status))
        assert api.post(f"{API}/runs/run-1/rounds/{rnd}/reports", json={"reports": batch}).status_code == 200
        if rnd <= 4:
            api.post(f"{API}/runs/run-1/rounds/{rnd}/close", json=close_body(global_eval_accuracy=0.6 + rnd / 100, epsilon=0.5 * rnd))
    wait_for_analysis(api, "run-1")  # the engine must not reconcile the findings a test adds by hand
    return api


def _add_findings(store: Store) -> None:
    with store.write_session() as session:
        session.add_all(
            [
                FindingRow(run_id="run-1", kind="label_drift", severity="warning", client_id="c1",
                           first_round=2, last_round=4, score=0.41, threshold=0.2, message="client c1: drift",
                           details_json=json.dumps({"classes": [3]})),
                FindingRow(run_id="run-1", kind="nonfinite_update", severity="critical", client_id="c2",
                           first_round=4, last_round=4, score=None, threshold=None, message="client c2: NaN"),
                FindingRow(run_id="run-1", kind="label_drift", severity="warning", client_id="c0", status="resolved",
                           first_round=1, last_round=1, score=0.25, threshold=0.2, message="client c0: drift"),
            ]
        )


def test_list_runs_and_paging(api) -> None:
    for i in range(3):
        api.post(f"{API}/runs", json=run_spec(f"run-{i}"))
    page = api.get(f"{API}/runs", params={"limit": 2}).json()
    assert page["total"] == 3 and [r["run_id"] for r in page["items"]] == ["run-0", "run-1"]
    rest = api.get(f"{API}/runs", params={"limit": 2, "offset": 2}).json()
    assert [r["run_id"] for r in rest["items"]] == ["run-2"]
    assert api.get(f"{API}/runs", params={"limit": 100000}).status_code == 422


def test_run_detail_has_config_and_health(populated, store) -> None:
    _add_findings(store)
    detail = populated.get(f"{API}/runs/run-1").json()
    assert detail["config"]["task"]["feature_names"] == ["age", "income"]
    health = detail["health"]
    assert health["rounds_closed"] == 4 and health["rounds_open"] == 1
    assert health["last_closed_round"] == 4 and health["last_round_reported"] == 5
    assert health["clients_seen"] == 3 and health["reports"] == 14
    assert health["last_round_participation_ratio"] == pytest.approx(3 / 3)
    assert health["global_eval_accuracy"] == pytest.approx(0.64)
    assert health["centralized_gap"] == pytest.approx(0.9 - 0.64)
    assert health["epsilon"] == pytest.approx(2.0)
    open_items = populated.get(f"{API}/runs/run-1/findings", params={"status": "open"}).json()["items"]
    by_severity: dict[str, int] = {}
    for f in open_items:
        by_severity[f["severity"]] = by_severity.get(f["severity"], 0) + 1
    assert health["open_findings"] == by_severity
    assert by_severity["critical"] >= 1 and by_severity["warning"] >= 1  # the two inserted below


def test_rounds_are_paged_and_filterable(populated) -> None:
    page = populated.get(f"{API}/runs/run-1/rounds", params={"limit": 2, "offset": 1}).json()
    assert page["total"] == 5 and [r["round"] for r in page["items"]] == [2, 3]
    assert page["items"][1]["reports"] == 2
    open_rounds = populated.get(f"{API}/runs/run-1/rounds", params={"status": "open"}).json()
    assert [r["round"] for r in open_rounds["items"]] == [5]
    assert populated.get(f"{API}/runs/run-1/rounds/9").status_code == 404


def test_clients_show_latest_values(populated) -> None:
    clients = {c["client_id"]: c for c in populated.get(f"{API}/runs/run-1/clients").json()["items"]}
    assert set(clients) == {"c0", "c1", "c2"}
    assert clients["c2"]["rounds_reported"] == 4 and clients["c2"]["last_round"] == 5
    assert clients["c2"]["status"] == "failed"
    assert clients["c0"]["eval_accuracy"] == pytest.approx(0.5 + 5 / 20)
    page = populated.get(f"{API}/runs/run-1/clients", params={"limit": 1, "offset": 1}).json()
    assert page["total"] == 3 and page["items"][0]["client_id"] == "c1"


def test_client_history_over_a_round_range(populated) -> None:
    hist = populated.get(f"{API}/runs/run-1/clients/c2/history", params={"from_round": 2, "to_round": 4}).json()
    assert [h["round"] for h in hist["items"]] == [2, 4]
    assert hist["items"][0]["num_examples"] == 100 + 22
    assert populated.get(f"{API}/runs/run-1/clients/zz/history").status_code == 404
    bad = populated.get(f"{API}/runs/run-1/clients/c2/history", params={"from_round": 4, "to_round": 2})
    assert bad.status_code == 422 and "after" in bad.text


def test_findings_filters(populated, store) -> None:
    with store.write_session() as session:  # start from only the findings inserted here
        session.execute(FindingRow.__table__.delete())
    _add_findings(store)
    get = lambda **p: populated.get(f"{API}/runs/run-1/findings", params=p).json()  # noqa: E731
    assert get()["total"] == 3
    assert {f["client_id"] for f in get(kind="label_drift")["items"]} == {"c0", "c1"}
    assert [f["kind"] for f in get(severity="critical")["items"]] == ["nonfinite_update"]
    assert [f["client_id"] for f in get(client="c1")["items"]] == ["c1"]
    assert get(status="open")["total"] == 2
    assert {f["client_id"] for f in get(from_round=3, to_round=3)["items"]} == {"c1"}
    assert {f["client_id"] for f in get(from_round=4)["items"]} == {"c1", "c2"}
    one = get(client="c1")["items"][0]
    assert one["details"] == {"classes": [3]} and one["score"] == pytest.approx(0.41)
    assert populated.get(f"{API}/runs/run-1/findings", params={"severity": "bogus"}).status_code == 422
    typo = populated.get(f"{API}/runs/run-1/findings", params={"kind": ["label_drift", "lable_drift"]})
    assert typo.status_code == 422
    assert "unknown finding kind(s) lable_drift; valid kinds: label_drift," in typo.json()["detail"]


def test_openapi_docs_are_served(api) -> None:
    schema = api.get("/openapi.json").json()
    assert "/api/v1/runs/{run_id}/rounds/{round}/reports" in schema["paths"]
    assert api.get("/docs").status_code == 200
