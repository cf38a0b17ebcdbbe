"""The ``fedsentinel`` command: replay, and errors that name the problem."""

from __future__ import annotations

import json

import httpx
import pytest
from click.testing import CliRunner

from collectors.sink import JsonlWriter
from monitor.cli import main
from monitor.server import ServerThread
from monitor.settings import Settings
from tests.factories import close_body, report, run_spec


@pytest.fixture
def service_url(tmp_path):  # type: ignore[no-untyped-def]
    with ServerThread(Settings(data_dir=tmp_path / "svc", port=0)) as url:
        yield url


def test_replay_sends_a_jsonl_file_in_order(tmp_path, service_url) -> None:
    path = tmp_path / "stream.jsonl"
    with JsonlWriter(path) as out:
        out.register_run(run_spec())
        for rnd in (1, 2):
            out.report("run-1", rnd, [report("c1", seed=rnd), report("c2", seed=rnd, update_norm=float("inf"))])
            out.close_round("run-1", rnd, close_body())
    result = CliRunner().invoke(main, ["replay", str(path), "--url", service_url])
    assert result.exit_code == 0, result.output
    assert "replayed 5 records" in result.output
    rounds = httpx.get(f"{service_url}/api/v1/runs/run-1/rounds").json()["items"]
    assert [(r["round"], r["status"], r["reports"]) for r in rounds] == [(1, "closed", 2), (2, "closed", 2)]
    # Replaying the same file again is harmless: identical records are recognised.
    again = CliRunner().invoke(main, ["replay", str(path), "--url", service_url])
    assert again.exit_code == 0, again.output
    assert httpx.get(f"{service_url}/api/v1/runs/run-1").json()["health"]["reports"] == 4


def test_replay_names_the_bad_line(tmp_path, service_url) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"op": "register_run", "run_id": "run-1", "body": run_spec()}) + "\n{oops\n")
    result = CliRunner().invoke(main, ["replay", str(path), "--url", service_url])
    assert result.exit_code != 0 and "bad.jsonl:2" in result.output and "not valid JSON" in result.output
    path.write_text(json.dumps({"op": "explode", "run_id": "x", "body": {}}) + "\n")
    result = CliRunner().invoke(main, ["replay", str(path), "--url", service_url])
    assert "unknown op 'explode'" in result.output


def test_replay_reports_a_refused_record_with_its_line(tmp_path, service_url) -> None:
    path = tmp_path / "refused.jsonl"
    with JsonlWriter(path) as out:
        out.register_run(run_spec())
        out.report("run-1", 1, [report("c1", label_histogram=[1.0])])
    result = CliRunner().invoke(main, ["replay", str(path), "--url", service_url])
    assert result.exit_code == 1
    assert "refused.jsonl:2" in result.output and "422" in result.output and "label_histogram" in result.output


def test_serve_refuses_an_unusable_database_url(monkeypatch: pytest.MonkeyPatch) -> None:
    # serve hands its flags to uvicorn workers through FEDSENTINEL_* variables: restore them after.
    for name in ("HOST", "PORT", "WORKERS", "DATABASE_URL", "DATA_DIR"):
        monkeypatch.setenv(f"FEDSENTINEL_{name}", "placeholder")
        monkeypatch.delenv(f"FEDSENTINEL_{name}")
    result = CliRunner().invoke(main, ["serve", "--database-url", "mysql://nobody@127.0.0.1/x"])
    assert result.exit_code == 1 and "cannot open the store" in result.output


def test_demo_refuses_to_wipe_a_directory_it_did_not_create(tmp_path) -> None:
    (tmp_path / "fedsentinel.db").write_text("precious")
    result = CliRunner().invoke(main, ["demo", "--data-dir", str(tmp_path)])
    assert result.exit_code == 1 and "not a previous demo's directory" in result.output
    assert (tmp_path / "fedsentinel.db").read_text() == "precious"
