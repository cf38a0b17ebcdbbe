"""Property-based: no request body, valid-looking or not, makes the service answer 5xx."""

from __future__ import annotations

import json
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.factories import close_body, report, run_spec

API = "/api/v1"
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=30,
)
report_fields = list(report().keys())


@st.composite
def mutated_report(draw: st.DrawFn) -> dict:
    body = report(draw(st.sampled_from(["c1", "c2", "c3"])), seed=draw(st.integers(0, 3)))
    for field in draw(st.lists(st.sampled_from(report_fields), max_size=3)):
        body[field] = draw(json_values)
    return body


def _dumps(value: object) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


@FUZZ
@given(body=json_values)
def test_arbitrary_json_never_5xx(api, body: object) -> None:
    api.post(f"{API}/runs", json=run_spec())
    for path in ("/runs", "/runs/run-1/rounds/1/reports", "/runs/run-1/rounds/1/close"):
        r = api.post(f"{API}{path}", content=_dumps(body), headers={"content-type": "application/json"})
        assert r.status_code < 500, (path, r.text)


@FUZZ
@given(reports=st.lists(mutated_report(), min_size=1, max_size=4), rnd=st.integers(0, 3))
def test_mutated_reports_never_5xx_and_responses_are_json(api, reports: list[dict], rnd: int) -> None:
    api.post(f"{API}/runs", json=run_spec())
    r = api.post(f"{API}/runs/run-1/rounds/{rnd}/reports", content=_dumps({"reports": reports}),
                 headers={"content-type": "application/json"})
    assert r.status_code in (200, 409, 422), r.text
    r.json()
    if rnd % 2:
        api.post(f"{API}/runs/run-1/rounds/{rnd}/close", json=close_body())
    for path in ("", "/clients", "/rounds", "/findings", "/clients/c1/history"):
        q = api.get(f"{API}/runs/run-1{path}")
        assert q.status_code in (200, 404), (path, q.text)


@FUZZ
@given(value=st.floats(allow_nan=True, allow_infinity=True))
def test_any_float_in_fault_fields_is_stored_or_refused_cleanly(api, value: float) -> None:
    api.post(f"{API}/runs", json=run_spec())
    r = api.post(f"{API}/runs/run-1/rounds/1/reports",
                 content=_dumps({"reports": [report("c1", update_norm=value, eval_loss=value)]}),
                 headers={"content-type": "application/json"})
    if math.isnan(value) or value >= 0:
        assert r.status_code in (200, 409)
    else:
        assert r.status_code == 422
