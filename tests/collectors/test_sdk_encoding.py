"""The SDK's encodings: fast JSON (NaN kept as evidence) and the packed arrays, against a real service."""

from __future__ import annotations

import json
import math

import httpx
import numpy as np
import pytest

from collectors import MonitorClient
from collectors.client import encode_body
from tests.factories import close_body, report, run_spec


def test_fast_json_is_the_same_json() -> None:
    body = {"reports": [report(f"c{i}", seed=i) for i in range(5)]}
    assert json.loads(encode_body(body)) == body
    with_numpy = {
        "reports": [
            report("c1", update_sketch=np.array([0.1, -0.2, 1 / 3]), num_examples=np.int64(5))
        ]
    }
    decoded = json.loads(encode_body(with_numpy))["reports"][0]
    assert decoded["update_sketch"] == [0.1, -0.2, 1 / 3] and decoded["num_examples"] == 5


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_values_keep_their_tokens(bad: float) -> None:
    for body in (
        {"reports": [report("c1", update_norm=bad)]},
        {"reports": [report("c1", update_sketch=[0.0, bad, 1.0])]},
        {"reports": [report("c1", update_sketch=np.array([0.0, bad, 1.0]))]},
        {"reports": [report("c1", feature_histograms=[[1.0, 2.0, 3.0], [bad, 1.0]])]},
    ):
        text = encode_body(body).decode()
        assert "null" not in text  # orjson would have written NaN as null
        decoded = json.loads(text)["reports"][0]
        values = [
            decoded["update_norm"],
            *decoded["update_sketch"],
            *sum(decoded["feature_histograms"], []),
        ]
        assert any(math.isnan(v) if math.isnan(bad) else v == bad for v in values)


@pytest.mark.e2e
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_packed_sdk_against_a_real_service(service_factory, database_url, dtype: str) -> None:
    service = service_factory(database_url)
    sent = [report(f"c{i}", seed=i, update_sketch=[1 / 3, -0.2, 0.1 * i]) for i in range(7)]
    sent[2]["update_sketch"] = [float("nan"), 1.0, 2.0]
    sent[3]["update_norm"] = float("inf")
    with MonitorClient(service.url, batch_size=3, encoding="packed", packed_dtype=dtype) as sdk:
        sdk.register_run(run_spec(expected_clients=7))
        sdk.report("run-1", 1, sent)
        sdk.report("run-1", 1, sent)  # a resend: recognised, nothing stored twice
        sdk.close_round("run-1", 1, close_body())
    assert httpx.get(f"{service.url}/api/v1/runs/run-1/rounds/1").json()["reports"] == 7
    for original in sent:
        stored = httpx.get(
            f"{service.url}/api/v1/runs/run-1/clients/{original['client_id']}/history"
        ).json()
        sketch = stored["items"][0]["update_sketch"]
        expected = np.asarray(original["update_sketch"], dtype=dtype).astype(float).tolist()
        assert sketch == ["NaN" if math.isnan(v) else v for v in expected]
    assert (
        httpx.get(f"{service.url}/api/v1/runs/run-1/clients/c3/history").json()["items"][0][
            "update_norm"
        ]
        == "Infinity"
    )


def test_unknown_encodings_are_refused() -> None:
    with pytest.raises(ValueError, match="encoding"):
        MonitorClient("http://127.0.0.1:1", encoding="arrow")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="packed_dtype"):
        MonitorClient("http://127.0.0.1:1", encoding="packed", packed_dtype="float16")  # type: ignore[arg-type]
