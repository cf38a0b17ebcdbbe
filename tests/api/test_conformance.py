"""The API matches its own OpenAPI document: one error body, resolvable $refs, stated limits and statuses.

Runs against SQLite and PostgreSQL (the ``database_url`` fixture).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.exporter.test_alerts_api import notification
from tests.factories import close_body, report, run_spec

API = "/api/v1"


def assert_error_body(response: Any, status: int) -> dict[str, Any]:
    """The one error shape: ``detail`` a sentence, ``errors`` a list of {loc, msg, type}."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"detail", "errors"}, body
    assert isinstance(body["detail"], str) and body["detail"], body
    assert isinstance(body["errors"], list), body
    for error in body["errors"]:
        assert {"loc", "msg", "type"} <= set(error) and isinstance(error["loc"], list), error
    return body


def _refs(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def _resolve(doc: dict[str, Any], ref: str) -> object:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part]
    return node


@pytest.fixture
def registered(api):  # type: ignore[no-untyped-def]
    assert api.post(f"{API}/runs", json=run_spec()).status_code == 201
    return api


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "field"),
    [
        ("get", "/runs?limit=1001", None, 422, ["query", "limit"]),
        ("get", "/runs?limit=0", None, 422, ["query", "limit"]),
        ("get", "/runs/run-1/findings?from_round=5&to_round=2", None, 422, ["query", "from_round"]),
        (
            "get",
            "/runs/run-1/clients/c1/history?from_round=5&to_round=2",
            None,
            422,
            ["query", "from_round"],
        ),
        (
            "post",
            "/runs/run-1/rounds/1/reports",
            {"reports": [report(update_sketch=[1.0])]},
            422,
            ["body", "reports"],
        ),
        (
            "post",
            "/runs/run-1/rounds/1/close",
            close_body(aggregate_sketch=[1.0]),
            422,
            ["body", "aggregate_sketch"],
        ),
        (
            "post",
            "/runs",
            run_spec("run-2", thresholds={"no_such_threshold": 1.0}),
            422,
            ["body", "thresholds"],
        ),
        ("post", "/runs", {"run_id": "x"}, 422, ["body", "task"]),
        ("get", "/runs/nope", None, 404, None),
        ("get", "/runs/nope/rounds", None, 404, None),
        ("get", "/runs/run-1/rounds/99", None, 404, None),
        ("get", "/no/such/path", None, 404, None),
        ("post", "/runs", run_spec(expected_clients=99), 409, None),
    ],
)
def test_every_4xx_has_the_one_error_body(registered, method, path, body, status, field) -> None:
    response = getattr(registered, method)(
        f"{API}{path}", **({"json": body} if body is not None else {})
    )
    out = assert_error_body(response, status)
    if field is not None:
        assert any(e["loc"][: len(field)] == field for e in out["errors"]), out


def test_a_body_that_is_not_utf8_gets_the_same_422_as_invalid_json(registered) -> None:
    for path in (
        "/runs",
        "/runs/run-1/rounds/1/close",
        "/runs/run-1/rounds/1/reports",
        "/alerts/webhook",
    ):
        r = registered.post(
            f"{API}{path}", content=b"#\xfft", headers={"content-type": "application/json"}
        )
        body = assert_error_body(r, 422)
        assert body["errors"][0]["loc"][0] == "body" and "JSON" in body["detail"], body


def test_413_401_403_have_the_one_error_body(app_factory) -> None:
    api = app_factory(api_keys={"w": ["write"], "r": ["read"]}, max_body_bytes=4096)
    assert_error_body(api.get(f"{API}/runs"), 401)
    assert_error_body(api.get(f"{API}/runs", headers={"X-API-Key": "w"}), 403)
    big = {"reports": [report(f"c{i}") for i in range(40)]}
    assert_error_body(
        api.post(f"{API}/runs/x/rounds/1/reports", json=big, headers={"X-API-Key": "w"}), 413
    )
    r = api.post(f"{API}/runs", json=run_spec(), headers={"X-API-Key": "r"})
    assert "write" in assert_error_body(r, 403)["detail"]


def test_options_and_wrong_methods_name_every_allowed_method(api) -> None:
    r = api.options(f"{API}/runs")
    assert r.status_code == 204 and r.headers["allow"] == "GET, OPTIONS, POST"
    r = api.delete(f"{API}/runs")
    body = assert_error_body(r, 405)
    assert r.headers["allow"] == "GET, OPTIONS, POST" and "DELETE" in body["detail"]
    assert api.options(f"{API}/runs/run-1/rounds/1/reports").headers["allow"] == "OPTIONS, POST"
    assert api.put(f"{API}/runs/run-1").headers["allow"] == "GET, OPTIONS"


@pytest.mark.parametrize("value", [True, False, "3", 3.5, -1])
def test_webhook_truncated_alerts_must_be_a_non_negative_integer(api, value: object) -> None:
    r = api.post(f"{API}/alerts/webhook", json={**notification(), "truncatedAlerts": value})
    assert_error_body(r, 422)
    ok = api.post(f"{API}/alerts/webhook", json={**notification(), "truncatedAlerts": 3})
    assert ok.status_code == 200 and ok.json()["truncated_alerts"] == 3


def test_every_ref_resolves_from_the_document_root(api) -> None:
    doc = api.get("/openapi.json").json()
    refs = set(_refs(doc))
    assert "#/components/schemas/ReportBatch" in refs
    for ref in refs:
        assert isinstance(_resolve(doc, ref), dict), ref
    assert "$defs" not in str(doc)
    body = doc["paths"]["/api/v1/runs/{run_id}/rounds/{round}/reports"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ReportBatch"
    }


def test_limit_maximum_follows_the_setting(app_factory) -> None:
    doc = app_factory(page_size_max=250).get("/openapi.json").json()
    limits = [
        p["schema"]
        for item in doc["paths"].values()
        for op in item.values()
        for p in op.get("parameters", [])
        if p["name"] == "limit"
    ]
    assert len(limits) >= 6 and all(s["maximum"] == 250 and s["minimum"] == 1 for s in limits)


EXPECTED_STATUSES = {
    ("post", "/api/v1/runs"): {"200", "201", "408", "409", "413"},
    ("get", "/api/v1/runs/{run_id}"): {"404"},
    ("post", "/api/v1/runs/{run_id}/rounds/{round}/reports"): {"404", "408", "409", "413"},
    ("post", "/api/v1/runs/{run_id}/rounds/{round}/close"): {"404", "408", "409", "413"},
    ("get", "/api/v1/runs/{run_id}/findings"): {"404"},
    ("post", "/api/v1/alerts/webhook"): {"408", "413"},
}


def test_every_status_a_route_returns_is_documented_with_the_error_body(api) -> None:
    doc = api.get("/openapi.json").json()
    error_ref = {"$ref": "#/components/schemas/ErrorOut"}
    for path, item in doc["paths"].items():
        if not path.startswith("/api/"):
            continue
        for method, op in item.items():
            codes = set(op["responses"])
            expected = {"200", "401", "403", "422", "503"} | EXPECTED_STATUSES.get(
                (method, path), set()
            )
            assert expected <= codes, (method, path, codes)
            for code in codes - {"200", "201"}:
                schema = op["responses"][code]["content"]["application/json"]["schema"]
                assert schema == error_ref, (method, path, code)
    error = doc["components"]["schemas"]["ErrorOut"]
    assert error["properties"]["detail"]["type"] == "string" and "HTTPValidationError" not in str(
        doc
    )


def test_non_finite_fault_evidence_is_documented_as_the_strings_it_travels_as(api) -> None:
    schemas = api.get("/openapi.json").json()["components"]["schemas"]
    norm = str(schemas["ClientReport"]["properties"]["update_norm"])
    assert "'NaN'" in norm and "'Infinity'" in norm
    assert "'NaN'" in str(schemas["FindingOut"]["properties"]["score"])


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("post", "/runs", run_spec("run-2", name="a\x00b")),
        ("post", "/runs", run_spec("run-2", metadata={"k": "v\x00"})),
        (
            "post",
            "/runs",
            run_spec(
                "run-2",
                task={"num_classes": 1, "feature_names": ["\x00"]},
                feature_bin_edges=[[0.0, 1.0]],
            ),
        ),  # fmt: skip
        ("post", "/alerts/webhook", {**notification(), "receiver": "r\x00"}),
        ("get", "/runs/run-1/findings?kind=a%00b", None),
        ("get", "/runs/run-1/findings?client=c%00", None),
        ("get", "/alerts?alertname=x%00", None),
    ],
)
def test_text_with_nul_gets_422_not_a_store_error(registered, method, path, body) -> None:
    """PostgreSQL text cannot hold NUL: it used to surface as a 503 from the store."""
    kwargs = {"json": body} if body is not None else {}
    assert_error_body(getattr(registered, method)(f"{API}{path}", **kwargs), 422)
