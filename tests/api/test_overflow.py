"""Finite values that would overflow a statistic are refused with a 422 naming the field.

A label histogram of nine bins of 8e306 and one of 1.6e308 is finite bin by bin,
but its sum is infinite, so every proportion and every drift score computed
from it is NaN and the drift it carries goes unseen. The service refuses such
values at the door instead (the bounds are in monitor/schemas.py).
"""

from __future__ import annotations

import json
import math
import re
import time

import numpy as np
import pytest

from monitor.schemas import MAX_BIN_COUNT
from tests.api.test_conformance import assert_error_body
from tests.factories import close_body, report, run_spec

API = "/api/v1"
OVERFLOWING_HISTOGRAM = [8e306] * 9 + [1.6e308]


def test_the_example_histogram_really_overflows() -> None:
    """The premise: each bin is finite, the sum is not, and the "proportions" are all zero."""
    h = np.array(OVERFLOWING_HISTOGRAM)
    with np.errstate(over="ignore"):
        total = h.sum()
    assert np.isfinite(h).all() and math.isinf(total)
    assert (h / total).sum() == 0  # not a distribution: every divergence from it is NaN


@pytest.mark.parametrize(
    ("overrides", "loc"),
    [
        ({"label_histogram": OVERFLOWING_HISTOGRAM}, ["body", "reports", 0, "label_histogram", 0]),
        (
            {"label_histogram": [1.0] * 9 + [2 * MAX_BIN_COUNT]},
            ["body", "reports", 0, "label_histogram", 9],
        ),
        (
            {"feature_histograms": [[1.0, 1.0, 1.7e308]] + [[1.0] * 10]},
            ["body", "reports", 0, "feature_histograms", 0, 2],
        ),
        (
            {
                "label_histogram": [-1.7e308] + [1.0] * 9,
                "histogram_noise": {"mechanism": "laplace", "scale": 1.0},
            },
            ["body", "reports", 0, "label_histogram", 0],
        ),
        (
            {"histogram_noise": {"mechanism": "gaussian", "scale": 1e200}},
            ["body", "reports", 0, "histogram_noise", "scale"],
        ),
        ({"wall_time_seconds": 1e308}, ["body", "reports", 0, "wall_time_seconds"]),
    ],
)
def test_values_that_would_overflow_a_statistic_get_422_naming_the_field(
    api, overrides, loc
) -> None:
    spec = run_spec(
        task={"num_classes": 10, "feature_names": ["a", "b"]},
        feature_bin_edges=[[0.0, 1.0, 2.0, 3.0], [float(i) for i in range(11)]],
    )
    assert api.post(f"{API}/runs", json=spec).status_code == 201
    fields = {
        "label_histogram": [1.0] * 10,
        "feature_histograms": [[1.0] * 3, [1.0] * 10],
        **overrides,
    }
    body = {"reports": [report("c1", **fields)]}
    r = api.post(
        f"{API}/runs/run-1/rounds/1/reports",
        content=json.dumps(body),
        headers={"content-type": "application/json"},
    )
    out = assert_error_body(r, 422)
    assert loc in [e["loc"] for e in out["errors"]], out
    assert ".".join(str(p) for p in loc[3:]) in out["detail"]
    assert api.get(f"{API}/runs/run-1/rounds").json()["total"] == 0  # nothing stored


@pytest.mark.parametrize(
    ("edges", "loc"),
    [
        ([[-1.7e308, 0.0, 1.7e308]], ["body", "feature_bin_edges", 0, 0]),  # width overflows
        ([[0.0, 1e200, 2e200]], ["body", "feature_bin_edges", 0, 1]),  # variance overflows
    ],
)
def test_bin_edges_whose_widths_or_variances_overflow_get_422(api, edges, loc) -> None:
    r = api.post(
        f"{API}/runs",
        json=run_spec(task={"num_classes": 4, "feature_names": ["a"]}, feature_bin_edges=edges),
    )
    out = assert_error_body(r, 422)
    assert loc in [e["loc"] for e in out["errors"]], out


def test_metadata_floats_must_be_finite(api) -> None:
    r = api.post(
        f"{API}/runs",
        content=json.dumps(run_spec(metadata={"lr": float("nan")})),
        headers={"content-type": "application/json"},
    )
    assert_error_body(r, 422)


def test_large_but_sane_counts_are_accepted(api) -> None:
    api.post(f"{API}/runs", json=run_spec())
    r = api.post(
        f"{API}/runs/run-1/rounds/1/reports",
        json={"reports": [report("c1", label_histogram=[MAX_BIN_COUNT] * 4)]},
    )
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("field", ["label_histogram", "feature_histograms"])
def test_the_packed_encoding_refuses_overflowing_bins_too(api, field: str) -> None:
    from collectors.client import PACKED_HEADERS, encode_packed_reports

    api.post(f"{API}/runs", json=run_spec())
    body = report("c1")
    body[field] = [[1.6e308] * 3, [1.0, 1.0]] if field == "feature_histograms" else [8e306] * 4
    raw = encode_packed_reports({"reports": [body]})
    r = api.post(f"{API}/runs/run-1/rounds/1/reports", content=raw, headers=PACKED_HEADERS)
    out = assert_error_body(r, 422)
    assert ["body", "reports", 0, field] in [e["loc"] for e in out["errors"]], out


def test_a_constant_update_of_1e308_is_found_and_exported_as_non_finite(api) -> None:
    """Through the service: the finding opens, its sentence is readable, /metrics says +Inf."""
    api.post(f"{API}/runs", json=run_spec(expected_clients=6))
    for rnd in range(1, 6):
        reports = [report(f"c{i}", seed=rnd * 10 + i) for i in range(6)]
        reports[0].update(update_norm=1e308, update_sketch=[1e308] * 3)
        assert (
            api.post(
                f"{API}/runs/run-1/rounds/{rnd}/reports", json={"reports": reports}
            ).status_code
            == 200
        )
        assert (
            api.post(f"{API}/runs/run-1/rounds/{rnd}/close", json=close_body()).status_code == 200
        )
    for _ in range(600):  # analysis may run off the request path: wait for the last round
        findings = api.get(f"{API}/runs/run-1/findings", params={"client": "c0"}).json()["items"]
        if any(f["last_round"] == 5 for f in findings):
            break
        time.sleep(0.05)
    kinds = {f["kind"] for f in findings}
    assert "nonfinite_update" in kinds and "stale_update" not in kinds, findings
    for f in findings:
        assert not re.search(r"\d{12,}", f["message"]), f["message"]
    metrics = api.get("/metrics").text
    line = next(
        x
        for x in metrics.splitlines()
        if x.startswith("fl_client_anomaly_score{") and 'client="c0"' in x
    )
    assert line.endswith(" +Inf"), line
