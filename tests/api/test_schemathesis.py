"""Schemathesis against the real service (uvicorn, SQLite and PostgreSQL): the API matches its OpenAPI document.

Every operation of ``/openapi.json`` gets generated requests, valid and
invalid, with a fixed seed and a bounded number of examples. Three checks must
hold for every answer: no 5xx, only documented status codes, and a body that
conforms to the documented response schema (content type included). A run
``run-1`` with rounds, clients and findings (NaN values among them) is stored
first, and the document's examples name it, so the 200 answers are checked
against real data, not only the 404s of random ids.

Pinned: schemathesis 4.32.5 (pyproject ``test`` extra). Budget: about a
minute per database on the project's 2-core VM.
"""

from __future__ import annotations

import json
from collections import Counter

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, seed, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from monitor.server import ServerThread
from monitor.settings import Settings
from tests.factories import close_body, report, run_spec

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    response_schema_conformance,
    content_type_conformance,
]
MAX_EXAMPLES = 12
SEED = 20261201


def _populate(url: str) -> None:
    """run-1: three closed rounds of three clients, client c1 sending NaN evidence in round 3."""
    with httpx.Client(base_url=f"{url}/api/v1", timeout=60) as http:
        assert http.post("/runs", json=run_spec()).status_code == 201
        for rnd in (1, 2, 3):
            reports = [report(f"c{i}", seed=rnd * 10 + i) for i in range(3)]
            if rnd == 3:
                reports[1].update(update_norm=float("nan"), eval_loss=float("inf"))
                reports[0]["label_histogram"] = [90.0, 1.0, 1.0, 1.0]
            body = json.dumps({"reports": reports}).encode()  # NaN tokens: fault evidence
            r = http.post(f"/runs/run-1/rounds/{rnd}/reports", content=body,
                          headers={"content-type": "application/json"})  # fmt: skip
            assert r.status_code == 200, r.text
            assert (
                http.post(f"/runs/run-1/rounds/{rnd}/close", json=close_body()).status_code == 200
            )


def _operations(url: str) -> list[schemathesis.APIOperation]:
    loaded = schemathesis.openapi.from_url(f"{url}/openapi.json")
    return [result.ok() for result in loaded.get_all_operations()]


def _known_ids(operation: schemathesis.APIOperation) -> dict[str, object]:
    """Path parameters that name stored things, so that 200 answers are generated too."""
    names = {p.name for p in operation.path_parameters}
    return {k: v for k, v in KNOWN.items() if k in names}


KNOWN = {"run_id": "run-1", "round": 3, "client_id": "c1"}


def _send(http: httpx.Client, kwargs: dict) -> httpx.Response:
    """Send a generated case with httpx: schemathesis' own ``requests`` transport breaks under
    urllib3-future (which grafana-client's niquests installs in place of urllib3)."""
    content = kwargs.get("data")
    if "json" in kwargs:
        content = json.dumps(kwargs["json"]).encode()
    return http.request(
        kwargs["method"], kwargs["url"], headers=kwargs.get("headers"),
        params=kwargs.get("params"), cookies=kwargs.get("cookies"), content=content,
    )  # fmt: skip


def _fuzz(
    http: httpx.Client, url: str, operation: schemathesis.APIOperation, mode: GenerationMode,
    fixed: dict, seen: Counter,
) -> None:  # fmt: skip
    @seed(SEED)
    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(case=operation.as_strategy(mode, path_parameters=fixed or None))
    def run(case: schemathesis.Case) -> None:
        kwargs = case.as_transport_kwargs(base_url=url)
        response = _send(http, kwargs)
        seen[operation.label, response.status_code] += 1
        try:
            case.validate_response(response, checks=CHECKS, transport_kwargs=kwargs)
        except AssertionError as exc:
            curl = case.as_curl_command(base_url=url)
            raise AssertionError(f"{operation.label} ({mode}): {exc}\n{curl}") from None

    try:
        run()
    except Unsatisfiable:  # nothing to break: e.g. negative data for an operation without inputs
        assert mode is GenerationMode.NEGATIVE, operation.label


@pytest.mark.e2e
@pytest.mark.slow
def test_the_api_matches_its_openapi_document(database_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with ServerThread(Settings(data_dir=tmp_path, port=0, database_url=database_url)) as url:
        _populate(url)
        operations = _operations(url)
        assert len(operations) >= 13
        seen: Counter = Counter()
        with httpx.Client(timeout=60) as http:
            for operation in operations:
                for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                    _fuzz(http, url, operation, mode, {}, seen)
                if _known_ids(operation):  # stored ids: 200 answers and their bodies
                    _fuzz(
                        http, url, operation, GenerationMode.POSITIVE, _known_ids(operation), seen
                    )
    # The run reached real data: every read of run-1 answered 200 at least once, and bad input 422.
    for operation in operations:
        codes = {code for (label, code), n in seen.items() if label == operation.label}
        if operation.method.upper() == "GET" and _known_ids(operation):
            assert 200 in codes, (operation.label, codes)
        assert codes, operation.label
    assert sum(n for (_, code), n in seen.items() if code == 422) > 50, seen
