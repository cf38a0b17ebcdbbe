"""The packed encoding of report arrays (base64 little-endian floats), and the fast JSON path.

Runs against SQLite and PostgreSQL (the ``database_url`` fixture). The JSON
behaviour itself is pinned by tests/api/test_ingest.py, unchanged.
"""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from sqlalchemy import select, update

from collectors.client import encode_packed_reports
from monitor.schemas import ClientReport
from monitor.store.report_rows import DIGEST_PREFIX, legacy_digest
from monitor.store.tables import ClientReportRow
from tests.factories import report, run_spec

API = "/api/v1"
PACKED = {"content-type": "application/vnd.fedsentinel.packed+json"}
REPORTS = f"{API}/runs/run-1/rounds/1/reports"


def _history(api, client="c1"):  # type: ignore[no-untyped-def]
    r = api.get(f"{API}/runs/run-1/clients/{client}/history")
    return r.json()["items"] if r.status_code == 200 else []


def _packed(values: list[float], dtype: str = "<f8") -> dict[str, str]:
    return {
        "dtype": dtype,
        "data": base64.b64encode(np.asarray(values, dtype=dtype).tobytes()).decode(),
    }


def _post_packed(api, reports: list[dict], dtype: str = "<f8"):  # type: ignore[no-untyped-def]
    return api.post(
        REPORTS, content=encode_packed_reports({"reports": reports}, dtype), headers=PACKED
    )


@pytest.mark.parametrize("dtype", ["<f8", "<f4"])
def test_packed_reports_round_trip(api, dtype: str) -> None:
    api.post(f"{API}/runs", json=run_spec())
    sent = [report(f"c{i}", seed=i, update_sketch=[0.1 * i, -0.2, 1 / 3]) for i in range(3)]
    r = _post_packed(api, sent, dtype)
    assert r.status_code == 200, r.text
    assert r.json() == {"run_id": "run-1", "round": 1, "accepted": 3, "duplicates": 0}
    for original in sent:
        stored = _history(api, original["client_id"])[0]
        for key, value in original.items():
            if key == "feature_histograms":
                expected = [np.asarray(row, dtype=dtype).astype(float).tolist() for row in value]
            elif key in ("update_sketch", "label_histogram"):
                expected = np.asarray(value, dtype=dtype).astype(float).tolist()
            else:
                expected = value
            assert stored[key] == expected, key


def test_the_same_report_in_either_encoding_is_one_report(api) -> None:
    api.post(f"{API}/runs", json=run_spec())
    assert api.post(REPORTS, json={"reports": [report("c1")]}).json()["accepted"] == 1
    again = _post_packed(api, [report("c1")])
    assert again.status_code == 200 and again.json() == {
        **again.json(),
        "accepted": 0,
        "duplicates": 1,
    }
    changed = _post_packed(api, [report("c1", update_sketch=[9.0, 9.0, 9.0])])
    assert changed.status_code == 409 and "c1" in changed.json()["detail"]
    assert len(_history(api)) == 1


def test_nonfinite_evidence_in_the_packed_encoding(api) -> None:
    api.post(f"{API}/runs", json=run_spec())
    body = report(
        "c1",
        update_norm=float("nan"),
        train_loss=float("inf"),
        update_sketch=[float("nan"), 1.0, float("-inf")],
    )
    assert _post_packed(api, [body], "<f4").status_code == 200
    stored = _history(api)[0]
    assert stored["update_norm"] == "NaN" and stored["train_loss"] == "Infinity"
    assert stored["update_sketch"] == ["NaN", 1.0, "-Infinity"]


def _located(response, *loc: object) -> str:  # type: ignore[no-untyped-def]
    """The message of the error at ``loc`` (under body/reports/0)."""
    assert response.status_code == 422, response.text
    errors = response.json()["errors"]  # the one error body: {detail, errors}
    assert isinstance(errors, list), errors
    for error in errors:
        if error["loc"] == ["body", "reports", 0, *loc]:
            return error["msg"]
    raise AssertionError(f"no error at {loc}: {errors}")


def test_wrong_dtype_gets_422_naming_the_field(api) -> None:
    api.post(f"{API}/runs", json=run_spec())
    body = json.loads(encode_packed_reports({"reports": [report("c1")]}))
    body["reports"][0]["update_sketch"]["dtype"] = "<i4"
    r = api.post(REPORTS, content=json.dumps(body), headers=PACKED)
    assert "<i4" in _located(r, "update_sketch", "dtype")
    assert _history(api) == []


def test_wrong_length_gets_422_naming_the_field_and_the_run(api) -> None:
    api.post(f"{API}/runs", json=run_spec())
    for field, values, message in [
        (
            "update_sketch",
            [1.0, 2.0],
            "client c1: update_sketch has 2 values, run run-1 has sketch_dim 3",
        ),
        (
            "label_histogram",
            [1.0] * 5,
            "client c1: label_histogram has 5 bins, run run-1 has 4 classes",
        ),
        (
            "feature_histograms",
            [1.0] * 4,
            "client c1: feature_histograms has 4 values, run run-1 has 5",
        ),
    ]:
        body = json.loads(encode_packed_reports({"reports": [report("c1")]}))
        body["reports"][0][field] = _packed(values)
        r = api.post(REPORTS, content=json.dumps(body), headers=PACKED)
        assert r.status_code == 422 and message in r.json()["detail"], (field, r.text)
    body = json.loads(encode_packed_reports({"reports": [report("c1")]}))
    body["reports"][0]["update_sketch"]["data"] = base64.b64encode(b"\x00" * 10).decode()
    r = api.post(REPORTS, content=json.dumps(body), headers=PACKED)
    assert "10 bytes" in _located(r, "update_sketch", "data")
    assert _history(api) == []


@pytest.mark.parametrize(
    ("overrides", "loc", "message"),
    [
        ({"label_histogram": [1.0, float("nan"), 1.0, 1.0]}, ("label_histogram",), "finite"),
        ({"label_histogram": [1.0, -2.0, 1.0, 1.0]}, (), "negative counts"),
        ({"eval_accuracy": 1.5}, ("eval_accuracy",), "<= 1"),
        ({"eval_accuracy": float("nan")}, ("eval_accuracy",), "got `str`"),
        ({"update_norm": -0.5}, ("update_norm",), ">= 0"),
        ({"client_id": "bad id"}, ("client_id",), "matching regex"),
        ({"status": "exploded"}, ("status",), "exploded"),
        ({"surprise": 1}, (), "surprise"),
        ({"eval_examples": -3}, ("eval_examples",), ">= 0"),
        ({"eval_examples": 2.5}, ("eval_examples",), "Expected `int"),
    ],
)
def test_invalid_packed_fields_get_422_naming_the_field(
    api, overrides: dict, loc: tuple, message: str
) -> None:
    api.post(f"{API}/runs", json=run_spec())
    r = _post_packed(api, [{**report("c1"), **overrides}])
    if loc or "negative" in message:
        assert message in _located(r, *loc)
    else:
        assert r.status_code == 422 and message in r.text
    assert _history(api) == []


def test_malformed_packed_body_gets_422(api) -> None:
    api.post(f"{API}/runs", json=run_spec())
    r = api.post(REPORTS, content=b'{"reports": [', headers=PACKED)
    assert r.status_code == 422 and "JSON" in r.text
    assert api.post(REPORTS, content=b'{"reports": []}', headers=PACKED).status_code == 422


def test_rows_stored_before_the_new_digest_are_still_recognised(api, store) -> None:
    """A resend (a replayed spool) across an upgrade: the stored digest is the old JSON hash."""
    api.post(f"{API}/runs", json=run_spec())
    api.post(REPORTS, json={"reports": [report("c1"), report("c2", seed=1)]})
    with store.write_session() as session:
        assert (
            session.execute(select(ClientReportRow.content_hash))
            .scalars()
            .first()
            .startswith(DIGEST_PREFIX)
        )
        for cid, seed in (("c1", 0), ("c2", 1)):
            old = legacy_digest(ClientReport.model_validate(report(cid, seed=seed)))
            session.execute(
                update(ClientReportRow)
                .where(ClientReportRow.client_id == cid)
                .values(content_hash=old)
            )
    again = api.post(REPORTS, json={"reports": [report("c1"), report("c2", seed=1)]})
    assert again.status_code == 200 and again.json()["duplicates"] == 2
    assert api.post(REPORTS, json={"reports": [report("c1", seed=3)]}).status_code == 409


def test_openapi_documents_both_encodings(api) -> None:
    doc = api.get("/openapi.json").json()
    body = doc["paths"]["/api/v1/runs/{run_id}/rounds/{round}/reports"]["post"]
    content = body["requestBody"]["content"]
    assert set(content) == {"application/json", "application/vnd.fedsentinel.packed+json"}
    ref = content["application/vnd.fedsentinel.packed+json"]["schema"]["$ref"]
    assert ref == "#/components/schemas/PackedBatch"  # resolvable from the document root
    packed = json.dumps(doc["components"]["schemas"])
    assert "PackedArray" in packed and "<f4" in packed and "base64" in packed


def test_the_fast_decoders_mirror_the_schema() -> None:
    """A field added to ClientReport must be added to the msgspec mirrors and the stored row too:
    otherwise every batch would silently take the slow path, or lose the field."""
    from monitor.api.report_batch import JsonReport, Noise, PackedReport
    from monitor.schemas import HistogramNoise
    from monitor.store.report_rows import ARRAYS, NOISE_FIELDS, SCALARS

    fields = set(ClientReport.model_fields)
    assert set(JsonReport.__struct_fields__) == fields
    assert set(PackedReport.__struct_fields__) == fields
    assert tuple(Noise.__struct_fields__) == NOISE_FIELDS == tuple(HistogramNoise.model_fields)
    from monitor.store.report_rows import COLUMNS

    inserted = {"run_id", "round", "received_at", *COLUMNS}
    assert {c.name for c in ClientReportRow.__table__.columns} - {"id"} == inserted
    stored = set(SCALARS) | set(ARRAYS)
    assert fields - {"histogram_noise"} <= stored
    assert stored - fields == {"noise_mechanism", "noise_scale", "noise_json"}


def test_new_report_fields_through_both_paths(api) -> None:
    """Secure-aggregation scalars and a full noise declaration, JSON and packed, stored alike."""
    api.post(f"{API}/runs", json=run_spec())
    noise = {
        "mechanism": "gaussian",
        "scale": 2.0,
        "l2_sensitivity": 2.0,
        "epsilon": 1.0,
        "delta": 1e-5,
        "releases_planned": 10,
        "release": 1,
    }
    body = report(
        "c1",
        update_cosine_previous_global=-0.25,
        update_repeated=True,
        histogram_noise=noise,
        label_histogram=[3.0, -0.5, 2.0, 1.0],
    )
    assert api.post(REPORTS, json={"reports": [body]}).json()["accepted"] == 1
    assert _post_packed(api, [body]).json()["duplicates"] == 1
    stored = _history(api)[0]
    assert stored["update_cosine_previous_global"] == -0.25 and stored["update_repeated"] is True
    assert {k: v for k, v in stored["histogram_noise"].items() if v is not None} == noise
    bad = _post_packed(api, [report("c2", update_cosine_previous_global=1.5)])
    assert "update_cosine_previous_global must be in [-1, 1]" in bad.text
    assert (
        api.post(
            REPORTS, json={"reports": [report("c2", update_cosine_previous_global=1.5)]}
        ).status_code
        == 422
    )


def test_bulk_insert_writes_timestamps_as_the_orm_does(api, store) -> None:
    """The rows bypass the ORM: their received_at must still be what SQLAlchemy writes and reads."""
    import re
    from datetime import datetime

    from sqlalchemy import text

    api.post(f"{API}/runs", json=run_spec())
    api.post(REPORTS, json={"reports": [report("c1")]})
    _post_packed(api, [report("c2")])
    with store.read_session() as session:
        rows = session.execute(select(ClientReportRow).order_by(ClientReportRow.id)).scalars().all()
        assert all(isinstance(r.received_at, datetime) for r in rows)
        assert rows[0].received_at <= rows[1].received_at
        if store.dialect == "sqlite":
            raw = session.execute(text("SELECT received_at FROM client_report")).scalars().all()
            assert all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}", v) for v in raw), raw


def test_the_schema_path_and_the_fast_path_agree_on_identity(api) -> None:
    """A batch with a NaN token goes through pydantic; its finite reports resent alone take the
    fast path and must still be recognised as the same reports."""
    api.post(f"{API}/runs", json=run_spec())
    noise = {"mechanism": "laplace", "scale": 1.0, "epsilon": 2.0}
    finite = report("c1", histogram_noise=noise, update_cosine_previous_global=0.5)
    raw = json.dumps({"reports": [finite, report("c2", update_norm=float("nan"))]})
    first = api.post(REPORTS, content=raw, headers={"content-type": "application/json"})
    assert first.status_code == 200 and first.json()["accepted"] == 2
    again = api.post(REPORTS, json={"reports": [finite]})
    assert again.json()["duplicates"] == 1
    assert _post_packed(api, [finite]).json()["duplicates"] == 1


def test_eval_examples_through_both_paths(api) -> None:
    """The evaluation-set size is stored and returned alike from JSON and packed bodies, and a
    report without it keeps the digest it had before the field existed (a spool replayed
    across the upgrade is still a duplicate)."""
    from monitor.store.report_rows import prepare_model

    api.post(f"{API}/runs", json=run_spec())
    body = report("c1", eval_examples=48)
    assert api.post(REPORTS, json={"reports": [body]}).json()["accepted"] == 1
    assert _post_packed(api, [body]).json()["duplicates"] == 1
    assert _history(api)[0]["eval_examples"] == 48
    assert _post_packed(api, [report("c2", eval_examples=0)]).json()["accepted"] == 1
    assert _history(api, "c2")[0]["eval_examples"] == 0
    assert api.post(REPORTS, json={"reports": [report("c3")]}).json()["accepted"] == 1
    assert _history(api, "c3")[0]["eval_examples"] is None
    # another evaluation-set size is another report
    assert api.post(REPORTS, json={"reports": [report("c1", eval_examples=49)]}).status_code == 409
    without = prepare_model(ClientReport.model_validate(report("c1"))).digest
    assert without == "2:8c2fa414482ee60e37fd310fd6e5820b7f84b969335fa414e3bd13a6f7cf4c"


def test_eval_examples_reach_the_detectors_from_the_store(api, store) -> None:
    """What the engine analyses (the stored round as arrays) carries the evaluation-set sizes,
    NaN for a client that did not send one, exactly as RoundInput.from_reports builds them."""
    import math

    from monitor.detectors import RoundInput
    from monitor.store.round_input import load_round_input
    from monitor.store.tables import RoundRow
    from monitor.store.writes import load_run_config

    api.post(f"{API}/runs", json=run_spec())
    reports = [report("c1", eval_examples=30), report("c2", seed=1)]
    api.post(REPORTS, json={"reports": reports})
    assert api.post(f"{API}/runs/run-1/rounds/1/close", json={}).status_code == 200
    with store.read_session() as session:
        config = load_run_config(session, "run-1")
        data = load_round_input(session, config, session.get(RoundRow, ("run-1", 1)))
    assert data.eval_examples[0] == 30 and math.isnan(data.eval_examples[1])
    built = RoundInput.from_reports(
        1, [ClientReport.model_validate(r) for r in reports], None, config
    )
    np.testing.assert_array_equal(built.eval_examples, data.eval_examples)
