"""The generated dashboards: committed JSON equals the code, structure, queries and alert thresholds.

No Grafana server can be installed on these machines, so the dashboards are
checked by structure here and every panel query runs against a real
Prometheus in test_queries.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from monitor.app import create_app
from monitor.cli import main
from monitor.dashboards import DATASOURCE_UID
from monitor.dashboards.alerts import ALERT_THRESHOLDS
from monitor.dashboards.build import BUILDERS, check, render
from monitor.settings import Settings
from monitor.store import Store
from tests.dashboards.helpers import (
    DASHBOARD_FILES,
    GRAFANA,
    LABEL_VALUES,
    PROMETHEUS_OWN,
    dashboards,
    data_panels,
    drawn_thresholds,
    exprs,
    metric_names,
    panels,
    provisioned_prometheus,
    rules,
)
from tests.exporter.populate import add_finding, populate

BOARDS = dashboards()


def test_committed_json_is_what_the_code_generates() -> None:
    assert check(GRAFANA) == [], "run `fedsentinel dashboards build` and commit the JSON"
    assert {p.name for p in DASHBOARD_FILES} == set(render())


def test_build_and_check_commands(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["dashboards", "build", "--dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.glob("*.json")) == sorted(
        f"{uid}.json" for uid in BUILDERS
    )
    assert runner.invoke(main, ["dashboards", "check", "--dir", str(tmp_path)]).exit_code == 0

    edited = tmp_path / "fedsentinel-overview.json"
    edited.write_text(edited.read_text().replace('"Current round"', '"Round (edited by hand)"'))
    result = runner.invoke(main, ["dashboards", "check", "--dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "fedsentinel-overview.json: differs from the code" in result.output


def test_valid_json_with_unique_uids_and_the_pinned_schema() -> None:
    assert len(BOARDS) == 4
    uids = [b["uid"] for b in BOARDS.values()]
    assert len(set(uids)) == len(uids)
    for name, board in BOARDS.items():
        assert name == f"{board['uid']}.json"
        assert 8 <= len(board["uid"]) <= 40 and re.fullmatch(r"[a-z0-9-]+", board["uid"])
        assert board["schemaVersion"] == 42, (
            "grafana-foundation-sdk==0.0.21; compose pins Grafana 12.3"
        )
        assert board["title"] and board["description"]
        ids = [p["id"] for p in panels(board)]
        assert len(set(ids)) == len(ids) and 0 not in ids, name


def test_every_panel_uses_the_provisioned_datasource() -> None:
    provisioned = provisioned_prometheus()
    assert provisioned["uid"] == DATASOURCE_UID
    for name, board in BOARDS.items():
        for panel in data_panels(board):
            where = f"{name}: {panel['title']}"
            assert panel["datasource"] == {"type": "prometheus", "uid": DATASOURCE_UID}, where
            assert panel["targets"], where
            for target in panel["targets"]:
                assert target["datasource"] == {"type": "prometheus", "uid": DATASOURCE_UID}, where
        for variable in board["templating"]["list"]:
            assert variable["datasource"]["uid"] == DATASOURCE_UID


def test_every_panel_has_a_description_a_unit_and_a_place_on_the_grid() -> None:
    for name, board in BOARDS.items():
        cells: list[tuple[int, int, int, int, str]] = []
        for panel in panels(board):
            pos = panel["gridPos"]
            assert pos["w"] > 0 and pos["h"] > 0 and pos["x"] >= 0 and pos["y"] >= 0
            assert pos["x"] + pos["w"] <= 24, f"{name}: {panel['title']} is wider than the grid"
            cells.append((pos["x"], pos["y"], pos["w"], pos["h"], panel["title"]))
            if panel["type"] != "row":
                assert len(panel.get("description", "")) > 20, (
                    f"{name}: {panel['title']} needs a description"
                )
                assert panel["fieldConfig"]["defaults"].get("unit"), (
                    f"{name}: {panel['title']} needs a unit"
                )
        for i, (x1, y1, w1, h1, t1) in enumerate(cells):
            for x2, y2, w2, h2, t2 in cells[i + 1 :]:
                overlap = x1 < x2 + w2 and x2 < x1 + w1 and y1 < y2 + h2 and y2 < y1 + h1
                assert not overlap, f"{name}: {t1!r} overlaps {t2!r}"


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    """Metric name -> label names, from /metrics of a real app over a store with runs and findings."""
    tmp = tmp_path_factory.mktemp("catalog")
    store = Store(f"sqlite:///{tmp / 'fedsentinel.db'}")
    store.create_schema()
    ids = populate(store, "r1", 6, rounds=3)
    with store.write_session() as session:
        add_finding(session, "r1", "label_drift", ids[0], 2, 3)
        add_finding(session, "r1", "fairness_regression", None, 2, 3)
    with TestClient(create_app(Settings(data_dir=tmp), store=store)) as api:
        api.get("/api/v1/runs")  # one request so the latency histogram has a series
        text = api.get("/metrics").text
    store.dispose()
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}.get(
            family.type, [""]
        )
        for suffix in suffixes:
            names.setdefault(family.name + suffix, set())
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


def test_every_metric_in_a_query_is_in_the_exporters_catalog(catalog: dict[str, set[str]]) -> None:
    used: set[str] = set()
    for name, board in BOARDS.items():
        for panel in data_panels(board):
            for expr in exprs(panel):
                found = metric_names(expr)
                assert found, f"{name}: {panel['title']}: no metric in {expr}"
                used |= found
                unknown = found - set(catalog) - PROMETHEUS_OWN
                assert not unknown, f"{name}: {panel['title']}: {sorted(unknown)} not exported"
    assert len(used) > 60  # the dashboards cover the catalog, not a corner of it


def test_metric_name_parser() -> None:
    expr = ('histogram_quantile(0.95, sum by (le, route) (rate(fedsentinel_http_request_duration_seconds_bucket'
            '{instance=~"$instance", code=~"5.."}[$__rate_interval]))) or vector(0) and on (client) '
            'topk(10, max by (client) (label_replace(fl_client_x{run="$run"}, "signal", "label", "", "")))')  # fmt: skip
    assert metric_names(expr) == {"fedsentinel_http_request_duration_seconds_bucket", "fl_client_x"}


def test_every_variable_query_is_valid(catalog: dict[str, set[str]]) -> None:
    for name, board in BOARDS.items():
        defined: list[str] = []
        for variable in board["templating"]["list"]:
            assert variable["type"] == "query"
            match = LABEL_VALUES.match(variable["query"])
            assert match, (
                f"{name}: ${variable['name']}: {variable['query']!r} is not label_values(...)"
            )
            selector, label = match["selector"], match["label"]
            [metric] = metric_names(selector)
            target_labels = {"instance", "job"}  # Prometheus adds them to every scraped series
            assert label in catalog[metric] | target_labels, (
                f"{name}: {metric} has no label {label}"
            )
            for used in re.findall(r"\$(\w+)", selector):
                assert used in defined, (
                    f"{name}: ${variable['name']} uses ${used} before it is defined"
                )
            defined.append(variable["name"])
        text = json.dumps(board["panels"])
        for used in set(re.findall(r"\$\{?([a-z]\w*)", text)):
            assert used in defined, f"{name}: panels use ${used}, which is not a variable"


def test_alert_thresholds_agree_with_the_rules_file() -> None:
    """Every ``>= N`` of an alert rule equals the value the dashboards draw for it, and none is missing."""
    by_alert = rules()
    for t in ALERT_THRESHOLDS:
        expr = " ".join(by_alert[t.alert]["expr"].split())
        assert t.metric in expr, t
        for value in t.matchers.values():
            assert value in expr, t
        levels = {float(v) for v in re.findall(r">=\s*([0-9.]+)", expr)}
        assert levels == {t.value}, f"{t.alert}: rule has >= {levels}, dashboards draw {t.value}"
        assert by_alert[t.alert]["labels"]["severity"] == t.severity
    thresholded = {
        name for name, rule in by_alert.items() if re.search(r"\bfl_\w+.*>=", rule["expr"])
    }
    assert thresholded == {t.alert for t in ALERT_THRESHOLDS}


def test_panels_draw_the_alert_thresholds() -> None:
    """Every panel that plots an alerted metric (with the rule's matchers) draws the rule's threshold."""
    for t in ALERT_THRESHOLDS:
        showing = []
        for name, board in BOARDS.items():
            for panel in data_panels(board):
                hits = [e for e in exprs(panel) if t.metric in metric_names(e)]
                if t.matchers:
                    hits = [
                        e for e in hits if all(f'{k}="{v}"' in e for k, v in t.matchers.items())
                    ]
                if hits:
                    showing.append(panel["title"])
                    drawn = drawn_thresholds(panel)
                    assert t.value in drawn, (
                        f"{name}: {panel['title']} plots {t.metric} without {t.value} ({t.alert})"
                    )
        assert showing, f"no panel shows {t.metric} {t.matchers} ({t.alert})"
