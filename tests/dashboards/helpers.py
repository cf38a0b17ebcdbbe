"""Reading the generated dashboards: panels, queries, metric names in PromQL, variable substitution."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "dashboards" / "grafana"
DASHBOARD_FILES = sorted(GRAFANA.glob("*.json"))
PROVISIONING = GRAFANA / "provisioning"
RULES = ROOT / "dashboards" / "prometheus" / "rules" / "fl-alerts.yml"

PROMETHEUS_OWN = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
"""Series Prometheus itself writes for every target (not in the exporter's catalog)."""

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
             "bool", "offset", "inf", "nan"}  # fmt: skip


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: load(p) for p in DASHBOARD_FILES}


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' nested panels included (rows themselves too)."""
    for panel in board.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def data_panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in panels(board) if p["type"] != "row"]


def exprs(panel: dict[str, Any]) -> list[str]:
    return [t["expr"] for t in panel.get("targets", [])]


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (label lists, matchers, ranges and strings removed)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    names = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", s):
        name = match.group(1)
        if name.lower() not in _KEYWORDS:
            names.add(name)
    return names


def substitute(expr: str, values: dict[str, str]) -> str:
    """Grafana's variables replaced: ``$run``, ``${run}``, ``$__rate_interval`` ..."""
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", values[name]).replace("$" + name, values[name])
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    return expr


LABEL_VALUES = re.compile(
    r"^label_values\((?:(?P<selector>.+),\s*)?(?P<label>[a-zA-Z_][a-zA-Z0-9_]*)\)$"
)


def provisioned_prometheus() -> dict[str, Any]:
    doc = yaml.safe_load((PROVISIONING / "datasources" / "fedsentinel.yaml").read_text())
    [ds] = [d for d in doc["datasources"] if d["type"] == "prometheus"]
    return ds


def rules() -> dict[str, dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return {r["alert"]: r for g in doc["groups"] for r in g["rules"] if "alert" in r}


def drawn_thresholds(panel: dict[str, Any]) -> set[float]:
    """Threshold values a panel draws: its defaults (when a time series shows them), overrides,
    and series that plot a level in the panel's own units (``0.8 * (...)``)."""
    values: set[float] = set()
    for expr in exprs(panel):
        level = re.match(r"^\s*([0-9.]+)\s*\*", expr)
        if level:
            values.add(float(level.group(1)))
    defaults = panel.get("fieldConfig", {}).get("defaults", {})
    style = defaults.get("custom", {}).get("thresholdsStyle", {}).get("mode", "off")
    if panel["type"] != "timeseries" or style != "off":
        values |= {
            s["value"]
            for s in defaults.get("thresholds", {}).get("steps", [])
            if s["value"] is not None
        }
    for override in panel.get("fieldConfig", {}).get("overrides", []):
        for prop in override["properties"]:
            if prop["id"] == "thresholds":
                values |= {s["value"] for s in prop["value"]["steps"] if s["value"] is not None}
    return values
