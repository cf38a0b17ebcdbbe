"""``fedsentinel simulate``: files, flags, the service, and errors without tracebacks."""

from __future__ import annotations

import json

import httpx
import pytest
from click.testing import CliRunner

from collectors.sink import read_records
from simulator.cli import parse_fault, simulate

FAST = ["--clients", "6", "--rounds", "3", "--no-faults", "--no-progress"]


def test_parse_fault_flags() -> None:
    f = parse_fault("exploding_update:clients=3,c007:onset=10:severity=0.8:scale=50")
    assert f == {
        "kind": "exploding_update",
        "clients": [3, "c007"],
        "onset_round": 10,
        "severity": 0.8,
        "scale": 50,
    }
    assert parse_fault("covariate_shift:clients=1:features=2,3")["features"] == [2, 3]
    # a federation-wide fault names no clients; the attacks are kinds like any other
    assert parse_fault("federation_covariate_shift:onset=5") == {
        "kind": "federation_covariate_shift",
        "onset_round": 5,
    }
    assert parse_fault("alie:clients=1,2:severity=0.6")["kind"] == "alie"


def test_attacks_and_partial_participation_from_flags(tmp_path) -> None:
    out = tmp_path / "p.jsonl"
    result = CliRunner().invoke(
        simulate,
        [
            *FAST,
            "--out",
            str(out),
            "--clients",
            "8",
            "--sample-fraction",
            "0.5",
            "--missing-reports",
            "timeout",
            "--fault",
            "ipm:clients=1,2:onset=2:severity=0.5",
            "--fault",
            "federation_covariate_shift:onset=3",
        ],
    )
    assert result.exit_code == 0, result.output
    closes = [rec for _, rec in read_records(out) if rec["op"] == "close_round"]
    assert [c["body"]["num_sampled"] for c in closes] == [4, 4, 4]
    truth = json.loads((tmp_path / "p.truth.json").read_text())["faults"]
    assert {t["fault"] for t in truth} == {"ipm", "federation_covariate_shift"}
    assert sum(t["scope"] == "federation" for t in truth) == 8


def test_writes_jsonl_and_truth(tmp_path) -> None:
    out = tmp_path / "run.jsonl"
    result = CliRunner().invoke(
        simulate,
        [
            *FAST,
            "--out",
            str(out),
            "--run-id",
            "cli-run",
            "--fault",
            "label_flip:clients=2:onset=2:severity=1",
        ],
    )
    assert result.exit_code == 0, result.output
    records = [rec for _, rec in read_records(out)]
    assert [r["op"] for r in records] == ["register_run"] + ["report", "close_round"] * 3
    assert all(r["run_id"] == "cli-run" for r in records)
    truth = json.loads((tmp_path / "run.truth.json").read_text())
    assert truth["faults"][0]["client_id"] == "c002" and truth["faults"][0]["onset_round"] == 2
    assert "global accuracy" in result.output and "label_flip" in result.output
    # --out is overwritten, not appended
    assert CliRunner().invoke(simulate, [*FAST, "--out", str(out)]).exit_code == 0
    assert sum(1 for _ in read_records(out)) == 7


def test_scenario_file_and_overrides(tmp_path) -> None:
    scenario = tmp_path / "s.toml"
    scenario.write_text(
        'run_id = "from-file"\nnum_clients = 4\nrounds = 2\nmodel = "logreg"\ncentralized_baseline = false\n'
    )
    out = tmp_path / "o.jsonl"
    result = CliRunner().invoke(
        simulate, ["--scenario", str(scenario), "--rounds", "1", "--out", str(out), "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    records = [rec for _, rec in read_records(out)]
    assert (
        records[0]["body"]["run_id"] == "from-file" and records[0]["body"]["expected_clients"] == 4
    )
    assert [r.get("round") for r in records if r["op"] == "close_round"] == [1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--fault", "wobble:clients=1"], "unknown fault kind 'wobble'"),
        (["--fault", "label_flip:onset=2"], "name the clients"),
        (["--fault", "label_flip:clients=1:oops"], "is not key=value"),
        (["--fault", "label_flip:clients=99"], "outside 0..5"),
        (["--clients", "0"], "num_clients"),
    ],
)
def test_bad_input_is_a_usage_error(tmp_path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(simulate, [*FAST, "--out", str(tmp_path / "x.jsonl"), *args])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_needs_a_destination_and_a_valid_scenario_file(tmp_path) -> None:
    result = CliRunner().invoke(simulate, FAST)
    assert result.exit_code == 2 and "--url" in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("rounds: [1\n")
    result = CliRunner().invoke(
        simulate, ["--scenario", str(bad), "--out", str(tmp_path / "x.jsonl")]
    )
    assert (
        result.exit_code == 2 and "bad.yaml" in result.output and "Traceback" not in result.output
    )


def test_sends_to_the_service_through_the_sdk(tmp_path, monkeypatch) -> None:
    """--url goes through collectors.MonitorClient: the same three calls, over HTTP."""
    seen: list[tuple[str, dict]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.path, json.loads(request.content)))
        assert request.headers["Authorization"] == "Bearer k1"
        return httpx.Response(200, json={})

    import collectors.client as client_module

    real = client_module.MonitorClient.__init__

    def patched(self, url, **kwargs):
        kwargs["transport"] = httpx.MockTransport(handler)
        real(self, url, **kwargs)

    monkeypatch.setattr(client_module.MonitorClient, "__init__", patched)
    result = CliRunner().invoke(
        simulate,
        [
            *FAST,
            "--url",
            "http://fedsentinel.invalid",
            "--api-key",
            "k1",
            "--truth",
            str(tmp_path / "t.json"),
            "--spool-dir",
            str(tmp_path / "spool"),
        ],
    )
    assert result.exit_code == 0, result.output
    paths = [p for p, _ in seen]
    assert paths[0] == "/api/v1/runs"
    assert paths[1:3] == ["/api/v1/runs/demo/rounds/1/reports", "/api/v1/runs/demo/rounds/1/close"]
    assert len(seen[1][1]["reports"]) == 6


def test_service_refusal_is_a_clean_error(tmp_path, monkeypatch) -> None:
    import collectors.client as client_module

    real = client_module.MonitorClient.__init__

    def patched(self, url, **kwargs):
        kwargs["transport"] = httpx.MockTransport(
            lambda r: httpx.Response(401, json={"detail": "bad key"})
        )
        real(self, url, **kwargs)

    monkeypatch.setattr(client_module.MonitorClient, "__init__", patched)
    result = CliRunner().invoke(
        simulate, [*FAST, "--url", "http://x.invalid", "--truth", str(tmp_path / "t.json")]
    )
    assert result.exit_code == 1
    assert (
        "401" in result.output and "bad key" in result.output and "Traceback" not in result.output
    )
