"""The project's Prometheus and Alertmanager files, checked by the real promtool and amtool."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

DASHBOARDS = Path(__file__).resolve().parents[2] / "dashboards"
PROMETHEUS = DASHBOARDS / "prometheus"
RULES = PROMETHEUS / "rules" / "fl-alerts.yml"
RULE_TESTS = sorted((PROMETHEUS / "tests").glob("*.yml"))
ALERTMANAGER = DASHBOARDS / "alertmanager" / "alertmanager.yml"


def tool(name: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    if shutil.which(name) is None:
        message = f"{name} is not installed (Debian packages prometheus, prometheus-alertmanager)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return subprocess.run([name, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def alert_names() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule]


def test_promtool_check_rules() -> None:
    result = tool("promtool", "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_names())} rules found" in result.stdout


def test_promtool_check_config() -> None:
    result = tool("promtool", "check", "config", str(PROMETHEUS / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_test_rules() -> None:
    result = tool(
        "promtool", "test", "rules", *[p.name for p in RULE_TESTS], cwd=PROMETHEUS / "tests"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_TESTS)


def test_every_alert_has_a_firing_and_a_quiet_test_and_a_runbook() -> None:
    fires: set[str] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS:
        doc = yaml.safe_load(path.read_text())
        for test in doc["tests"]:
            assert "interval" in test, (
                f"{path.name}: {test.get('name')} needs interval: (promtool 2.42)"
            )
            for case in test.get("alert_rule_test", []):
                (fires if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = alert_names()
    assert len(names) == len(set(names))
    assert not set(names) - fires, f"alerts never tested firing: {sorted(set(names) - fires)}"
    assert not set(names) - quiet, f"alerts never tested quiet: {sorted(set(names) - quiet)}"
    runbook = (Path(__file__).resolve().parents[2] / "docs" / "alerts.md").read_text()
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            labels, notes = rule["labels"], rule["annotations"]
            assert labels["severity"] in {"info", "warning", "critical"}
            assert {"summary", "description", "runbook_url"} <= set(notes)
            anchor = notes["runbook_url"].split("#", 1)[1]
            assert anchor == rule["alert"].lower()
            assert f"## {rule['alert']}\n" in runbook, (
                f"docs/alerts.md lacks a section for {rule['alert']}"
            )


def test_amtool_check_config() -> None:
    result = tool("amtool", "check-config", str(ALERTMANAGER))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_alertmanager_routes_to_the_services_webhook() -> None:
    config = yaml.safe_load(ALERTMANAGER.read_text())
    hooks = [h["url"] for r in config["receivers"] for h in r.get("webhook_configs", [])]
    assert "http://fedsentinel:8080/api/v1/alerts/webhook" in hooks
    assert {"run", "client"} <= set(config["route"]["group_by"])
    nonfinite = [
        r
        for r in config["inhibit_rules"]
        if 'alertname="FLClientNonFiniteUpdate"' in r["source_matchers"]
    ]
    assert nonfinite and nonfinite[0]["equal"] == ["run", "client"]
