"""Ingest: registration, reports, round close, idempotency, conflicts, validation, limits, auth.

Runs against SQLite and PostgreSQL (the ``database_url`` fixture).
"""

from __future__ import annotations

import json

import pytest

from tests.factories import close_body, report, run_spec

API = "/api/v1"


def _stored(api, run_id="run-1", client="c1"):  # type: ignore[no-untyped-def]
    r = api.get(f"{API}/runs/{run_id}/clients/{client}/history")
    return r.json()["items"] if r.status_code == 200 else []


def test_register_run_is_idempotent_and_conflicts_on_change(api) -> None:
    assert api.post(f"{API}/runs", json=run_spec()).status_code == 201
    again = api.post(f"{API}/runs", json=run_spec())
    assert again.status_code == 200 and again.json()["created"] is False
    changed = api.post(f"{API}/runs", json=run_spec(expected_clients=5))
    assert changed.status_code == 409
    assert "run-1" in changed.json()["detail"]
    assert api.get(f"{API}/runs/run-1").json()["config"]["expected_clients"] == 3


def test_report_batch_is_stored_and_round_trips(api) -> None:
    api.post(f"{API}/runs", json=run_spec())
    reports = [report(f"c{i}", seed=i) for i in range(3)]
    r = api.post(f"{API}/runs/run-1/rounds/1/reports", json={"reports": reports})
    assert r.status_code == 200, r.text
    assert r.json() == {"run_id": "run-1", "round": 1, "accepted": 3, "duplicates": 0}
    stored = _stored(api, client="c2")
    assert len(stored) == 1
    for key, value in reports[2].items():
        assert stored[0][key] == value, key


def test_identical_resend_is_stored_once(api) -> None:
    api.post(f"{API}/runs", json=run_spec())
    body = {"reports": [report("c1"), report("c2", seed=1)]}
    api.post(f"{API}/runs/run-1/rounds/1/reports", json=body)
    again = api.post(f"{API}/runs/run-1/rounds/1/reports", json=body)
    assert again.status_code == 200
    assert again.json()["accepted"] == 0 and again.json()["duplicates"] == 2
    rounds = api.get(f"{API}/runs/run-1/rounds").json()["items"]
    assert rounds[0]["reports"] == 2
    assert len(_stored(api, client="c1")) == 1


def test_conflicting_resend_gets_409_and_changes_nothing(api) -> None:
    api.post(f"{API}/runs", json=run_spec())
    api.post(f"{API}/runs/run-1/rounds/4/reports", json={"reports": [report("c1")]})
    before = _stored(api)
    r = api.post(
        f"{API}/runs/run-1/rounds/4/reports",
        json={"reports": [report("c9"), report("c1", train_loss=9.0)]},
    )
    assert r.status_code == 409
    detail = r.json()["detail"]
    assert "run-1" in detail and "round 4" in detail and "c1" in detail
    assert _stored(api) == before
    assert _stored(api, client="c9") == []  # all or nothing


def test_two_different_reports_for_one_client_in_one_request(api) -> None:
    api.post(f"{API}/runs", json=run_spec())
    r = api.post(
        f"{API}/runs/run-1/rounds/1/reports",
        json={"reports": [report("c1"), report("c1", eval_accuracy=0.1)]},
    )
    assert r.status_code == 409 and "c1" in r.json()["detail"]


def test_reports_for_a_closed_round_get_409(api) -> None:
    api.post(f"{API}/runs", json=run_spec())
    api.post(f"{API}/runs/run-1/rounds/2/reports", json={"reports": [report("c1")]})
    closed = api.post(f"{API}/runs/run-1/rounds/2/close", json=close_body())
    assert closed.status_code == 200 and closed.json()["reports"] == 1
    late = api.post(f"{API}/runs/run-1/rounds/2/reports", json={"reports": [report("c2")]})
    assert late.status_code == 409
    assert "run-1 round 2 is closed" in late.json()["detail"] and "c2" in late.json()["detail"]
    # An identical resend of a stored report is still recognised (spool replays must not fail) ...
    resend = api.post(f"{API}/runs/run-1/rounds/2/reports", json={"reports": [report("c1")]})
    assert resend.status_code == 200 and resend.json()["duplicates"] == 1
    # ... but a changed one is not.
    assert api.post(f"{API}/runs/run-1/rounds/2/reports", json={"reports": [report("c1", seed=5)]}).status_code == 409
    assert api.get(f"{API}/runs/run-1/rounds/2").json()["reports"] == 1


def test_round_close_is_idempotent_and_conflicts_on_change(api) -> None:
    api.post(f"{API}/runs", json=run_spec())
    assert api.post(f"{API}/runs/run-1/rounds/1/close", json=close_body()).json()["already_closed"] is False
    again = api.post(f"{API}/runs/run-1/rounds/1/close", json=close_body())
    assert again.status_code == 200 and again.json()["already_closed"] is True
    changed = api.post(f"{API}/runs/run-1/rounds/1/close", json=close_body(global_eval_accuracy=0.1))
    assert changed.status_code == 409 and "round 1" in changed.json()["detail"]
    assert api.get(f"{API}/runs/run-1/rounds/1").json()["global_eval_accuracy"] == 0.77


def test_nonfinite_fault_evidence_is_stored_as_such(api) -> None:
    api.post(f"{API}/runs", json=run_spec())
    raw = json.dumps(
        {"reports": [report("c1", update_norm=float("nan"), train_loss=float("inf"),
                            update_sketch=[float("nan"), 1.0, float("-inf")])]}
    )
    r = api.post(f"{API}/runs/run-1/rounds/1/reports", content=raw,
                 headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    raw_close = json.dumps(close_body(global_eval_loss=float("nan")))
    api.post(f"{API}/runs/run-1/rounds/1/close", content=raw_close, headers={"content-type": "application/json"})
    stored = _stored(api)[0]
    assert stored["update_norm"] == "NaN"
    assert stored["train_loss"] == "Infinity"
    assert stored["update_sketch"] == ["NaN", 1.0, "-Infinity"]
    assert api.get(f"{API}/runs/run-1/clients").json()["items"][0]["update_norm"] == "NaN"
    assert api.get(f"{API}/runs/run-1/rounds/1").json()["global_eval_loss"] == "NaN"
    assert api.get(f"{API}/runs/run-1").json()["health"]["global_eval_loss"] == "NaN"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("eval_accuracy", float("nan"), "finite number"),
        ("eval_accuracy", 1.5, "less than or equal to 1"),
        ("num_examples", -1, "greater than or equal to 0"),
        ("wall_time_seconds", float("inf"), "finite"),
        ("label_histogram", [1.0, float("nan"), 1.0, 1.0], "finite"),
        ("label_histogram", [1.0, -2.0, 1.0, 1.0], "negative counts"),
        ("update_norm", -0.5, "update_norm must be >= 0"),
        ("client_id", "bad id with spaces", "pattern"),
        ("client_id", "x" * 200, "pattern"),
        ("status", "exploded", "'ok', 'failed', 'dropped' or 'timeout'"),
        ("num_examples", "many", "valid integer"),
        ("eval_examples", -1, "greater than or equal to 0"),
        ("eval_examples", 12.5, "valid integer"),
        ("eval_examples", "many", "valid integer"),
        ("eval_examples", 2**31, "less than or equal to 2147483647"),
    ],
)
def test_invalid_report_fields_get_422(api, field: str, value: object, message: str) -> None:
    api.post(f"{API}/runs", json=run_spec())
    body = report("c1")
    body[field] = value
    raw = json.dumps({"reports": [body]})
    r = api.post(f"{API}/runs/run-1/rounds/1/reports", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert message in r.text
    assert _stored(api) == []


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"label_histogram": [1.0, 2.0]}, "label_histogram has 2 bins, run run-1 has 4 classes"),
        ({"feature_histograms": [[1.0, 1.0, 1.0]]}, "feature_histograms has 1 features, run run-1 has 2"),
        ({"feature_histograms": [[1.0, 1.0], [1.0, 2.0]]}, "feature_histograms[0] has 2 bins"),
        ({"update_sketch": [1.0]}, "update_sketch has 1 values, run run-1 has sketch_dim 3"),
    ],
)
def test_array_sizes_must_match_the_run(api, overrides: dict, message: str) -> None:
    api.post(f"{API}/runs", json=run_spec())
    r = api.post(f"{API}/runs/run-1/rounds/1/reports", json={"reports": [report("c1", **overrides)]})
    assert r.status_code == 422
    assert message in r.json()["detail"]


def test_noised_histograms_may_be_negative_when_noise_is_declared(api) -> None:
    api.post(f"{API}/runs", json=run_spec())
    body = report("c1", label_histogram=[3.0, -0.7, 12.0, 1.0],
                  histogram_noise={"mechanism": "laplace", "scale": 1.0})
    assert api.post(f"{API}/runs/run-1/rounds/1/reports", json={"reports": [body]}).status_code == 200
    noise = {k: v for k, v in _stored(api)[0]["histogram_noise"].items() if v is not None}
    assert noise == {"mechanism": "laplace", "scale": 1.0}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (run_spec(feature_bin_edges=[[0.0, 1.0]]), "feature_bin_edges has 1 features"),
        (run_spec(feature_bin_edges=[[0.0, 2.0, 1.0], [0.0, 1.0]]), "strictly increasing"),
        (run_spec(expected_clients=0), "greater than or equal to 1"),
        (run_spec(run_id="../etc"), "pattern"),
        (run_spec(dp={"noise_multiplier": 1.0, "clip_norm": 0, "sample_rate": 0.1}), "greater than 0"),
        (run_spec(unknown_field=1), "Extra inputs are not permitted"),
    ],
)
def test_invalid_run_registration_gets_422(api, spec: dict, message: str) -> None:
    r = api.post(f"{API}/runs", json=spec)
    assert r.status_code == 422 and message in r.text
    assert api.get(f"{API}/runs").json()["total"] == 0


def test_malformed_json_and_wrong_types(api) -> None:
    api.post(f"{API}/runs", json=run_spec())
    r = api.post(f"{API}/runs/run-1/rounds/1/reports", content=b'{"reports": [', headers={"content-type": "application/json"})
    assert r.status_code == 422 and "JSON" in r.text
    assert api.post(f"{API}/runs/run-1/rounds/1/reports", json={"reports": "c1"}).status_code == 422
    assert api.post(f"{API}/runs/run-1/rounds/1/reports", json={"reports": []}).status_code == 422
    assert api.post(f"{API}/runs/run-1/rounds/-1/reports", json={"reports": [report()]}).status_code == 422


def test_unknown_run_gets_404(api) -> None:
    for path in ("/runs/nope/rounds/1/reports",):
        r = api.post(f"{API}{path}", json={"reports": [report()]})
        assert r.status_code == 404 and "nope" in r.json()["detail"]
    assert api.post(f"{API}/runs/nope/rounds/1/close", json=close_body()).status_code == 404
    assert api.get(f"{API}/runs/nope").status_code == 404


def test_bodies_over_the_limit_get_413(app_factory) -> None:
    api = app_factory(max_body_bytes=4096)
    api.post(f"{API}/runs", json=run_spec())
    big = {"reports": [report(f"c{i}") for i in range(40)]}
    r = api.post(f"{API}/runs/run-1/rounds/1/reports", json=big)
    assert r.status_code == 413 and "4096" in r.json()["detail"]

    def chunks():  # no Content-Length: the limit still holds
        payload = json.dumps(big).encode()
        for i in range(0, len(payload), 1000):
            yield payload[i : i + 1000]

    r = api.post(f"{API}/runs/run-1/rounds/1/reports", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert api.get(f"{API}/runs/run-1/rounds").json()["total"] == 0


def test_report_count_limit_gets_413(app_factory) -> None:
    api = app_factory(max_reports_per_request=2)
    api.post(f"{API}/runs", json=run_spec())
    r = api.post(f"{API}/runs/run-1/rounds/1/reports", json={"reports": [report(f"c{i}") for i in range(3)]})
    assert r.status_code == 413 and "limit is 2" in r.json()["detail"]


def test_api_keys_and_scopes(app_factory) -> None:
    api = app_factory(api_keys={"writer-key": ["write"], "reader-key": ["read"], "admin-key": ["admin"]})
    assert api.post(f"{API}/runs", json=run_spec()).status_code == 401
    assert api.post(f"{API}/runs", json=run_spec(), headers={"Authorization": "Bearer nope"}).status_code == 401
    forbidden = api.post(f"{API}/runs", json=run_spec(), headers={"Authorization": "Bearer reader-key"})
    assert forbidden.status_code == 403 and "write" in forbidden.json()["detail"]
    assert api.post(f"{API}/runs", json=run_spec(), headers={"X-API-Key": "writer-key"}).status_code == 201
    assert api.get(f"{API}/runs").status_code == 401
    assert api.get(f"{API}/runs", headers={"X-API-Key": "writer-key"}).status_code == 403
    assert api.get(f"{API}/runs", headers={"X-API-Key": "reader-key"}).json()["total"] == 1
    assert api.get(f"{API}/runs", headers={"Authorization": "Bearer admin-key"}).status_code == 200
    assert api.get("/healthz").status_code == 200  # probes stay open


@pytest.mark.parametrize("value", [2**31, 10**20])
def test_counts_beyond_the_store_range_get_422(api, value: int) -> None:
    api.post(f"{API}/runs", json=run_spec())
    r = api.post(f"{API}/runs/run-1/rounds/1/reports", json={"reports": [report("c1", num_examples=value)]})
    assert r.status_code == 422 and "less than or equal to 2147483647" in r.text
    r = api.post(f"{API}/runs/run-1/rounds/1/close", json=close_body(num_sampled=value))
    assert r.status_code == 422
    assert api.get(f"{API}/runs", params={"offset": value}).status_code == 422
    assert api.get(f"{API}/runs/run-1/findings", params={"from_round": value}).status_code == 422


def test_registration_identity_ignores_key_order_and_defaults(api) -> None:
    first = run_spec(metadata={"b": 2, "a": 1}, thresholds={"label_drift_js": 0.3, "update_robust_z": 4.0})
    assert api.post(f"{API}/runs", json=first).status_code == 201
    reordered = run_spec(metadata={"a": 1, "b": 2}, thresholds={"update_robust_z": 4.0, "label_drift_js": 0.3},
                         sketch_seed=7, dp=None)
    assert api.post(f"{API}/runs", json=reordered).status_code == 200


def test_unknown_threshold_names_get_422(api) -> None:
    r = api.post(f"{API}/runs", json=run_spec(thresholds={"label_drfit_js": 0.3}))
    assert r.status_code == 422 and "label_drfit_js" in r.text and "label_drift_js" in r.text


def test_concurrent_identical_registrations_all_succeed(api) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(6) as pool:
        codes = list(pool.map(lambda _: api.post(f"{API}/runs", json=run_spec()).status_code, range(6)))
    assert sorted(codes) == [200] * 5 + [201]


def test_metrics_need_a_read_key_when_keys_are_configured(app_factory) -> None:
    api = app_factory(api_keys={"reader": ["read"]})
    assert api.get("/metrics").status_code == 401
    assert api.get("/metrics", headers={"Authorization": "Bearer reader"}).status_code == 200
    public = app_factory(api_keys={"reader": ["read"]}, metrics_public=True)
    assert public.get("/metrics").status_code == 200


def test_in_memory_sqlite_is_refused_clearly() -> None:
    from monitor.store import Store

    with pytest.raises(ValueError, match="in-memory SQLite"):
        Store("sqlite:///:memory:")
