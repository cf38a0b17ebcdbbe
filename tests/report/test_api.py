"""The report over HTTP (read scope) and ``fedsentinel report`` on the command line."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner
from fastapi.testclient import TestClient

from monitor.app import create_app
from monitor.cli import main
from monitor.settings import Settings
from tests.report.conftest import DRIFTING, RUN_ID


def _client(faulty_run, **settings: object) -> TestClient:  # type: ignore[no-untyped-def]
    return TestClient(
        create_app(Settings(data_dir=faulty_run.data_dir, **settings), store=faulty_run.store)
    )


def test_report_is_one_html_page_with_no_external_resource(faulty_run) -> None:  # type: ignore[no-untyped-def]
    with _client(faulty_run) as api:
        response = api.get(f"/api/v1/runs/{RUN_ID}/report")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    page = response.text
    assert page.startswith("<!doctype html>") and f'id="client-{DRIFTING}"' in page
    section = page[page.index(f'id="client-{DRIFTING}"') :]
    assert "feature that moved most" in section.split("</section>")[0], "the drifted pixels, named"
    markup = re.sub(
        r"<script[^>]*>.*?</script>", "", page, flags=re.S
    )  # the browser test watches scripts
    for external in ('src="', "@import", 'rel="stylesheet"', "<iframe"):
        assert external not in markup, external
    assert page.count("<script") == 3, "data, plotly bundle, drawing code: all inline"


def test_unknown_run_is_a_404_with_its_name(faulty_run) -> None:  # type: ignore[no-untyped-def]
    with _client(faulty_run) as api:
        response = api.get("/api/v1/runs/nope/report")
    assert response.status_code == 404 and "nope" in response.json()["detail"]


def test_report_and_index_need_a_read_key_when_keys_are_set(faulty_run) -> None:  # type: ignore[no-untyped-def]
    keys = {"reader": ["read"], "writer": ["write"]}
    with _client(faulty_run, api_keys=keys) as api:
        for path in (f"/api/v1/runs/{RUN_ID}/report", "/"):
            assert api.get(path).status_code == 401
            assert api.get(path, headers={"X-API-Key": "writer"}).status_code == 403
            assert api.get(path, headers={"Authorization": "Bearer reader"}).status_code == 200


def test_index_lists_runs_with_links_to_their_reports(faulty_run) -> None:  # type: ignore[no-untyped-def]
    with _client(faulty_run) as api:
        page = api.get("/").text
    assert f'<a href="/api/v1/runs/{RUN_ID}/report">{RUN_ID}</a>' in page


def test_cli_writes_the_report_from_the_store_and_from_the_service(
    faulty_run, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out" / "r.html"
    result = CliRunner().invoke(
        main, ["report", RUN_ID, "--out", str(out), "--data-dir", str(faulty_run.data_dir)]
    )
    assert result.exit_code == 0, result.output
    assert out.read_text().startswith("<!doctype html>") and str(out) in result.output
    served = tmp_path / "served.html"
    result = CliRunner().invoke(
        main, ["report", RUN_ID, "--out", str(served), "--url", faulty_run.url]
    )
    assert result.exit_code == 0, result.output
    assert f'id="client-{DRIFTING}"' in served.read_text()


def test_cli_names_the_problem_for_an_unknown_run_or_a_missing_store(
    faulty_run, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    result = CliRunner().invoke(main, ["report", "nope", "--data-dir", str(faulty_run.data_dir)])
    assert result.exit_code == 1 and "run nope is not registered" in result.output
    empty = tmp_path / "no-store"
    result = CliRunner().invoke(main, ["report", RUN_ID, "--data-dir", str(empty)])
    assert result.exit_code == 1 and "no store" in result.output
    assert not empty.exists(), "reading a report must not create a store"
