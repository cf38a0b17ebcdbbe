"""A run report's data as one self-contained HTML file (no network, no CDN).

Why plotly.js' *cartesian* bundle (``static/plotly-cartesian.min.js``, plotly.js
4.1.1, MIT, 1.5 MB): every chart here is a line, bar, scatter or heatmap,
which that bundle has, with hover labels and zoom built in; the full plotly.js
bundle (4.8 MB) adds 3-D, maps and finance charts this report never draws, and
smaller libraries (uPlot, ~50 kB) have no heatmap or per-point hover, which the
drift map and the divergence scatter need. The data is embedded once as JSON
and ``static/report.js`` draws from it; tables and sentences are plain HTML, so
the findings read even where scripts are blocked. docs/report.md has the sizes.
"""

from __future__ import annotations

import html
import json
from functools import cache
from importlib import resources
from typing import Any

from monitor.report.data import num

SEVERITY_LABEL = {"critical": "critical", "warning": "warning", "info": "info"}


@cache
def _static(name: str) -> str:
    return resources.files("monitor.report").joinpath("static", name).read_text(encoding="utf-8")


def _json_for_script(data: Any) -> str:
    """JSON that cannot close the <script> element it sits in."""
    text = json.dumps(data, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def e(value: object) -> str:
    return html.escape("" if value is None else str(value))


def client_anchor(client_id: str) -> str:
    """An HTML id for the client's section, distinct for distinct ids.

    Client ids may hold ``. _ : @``; mapping them all to ``_`` made ``a.b`` and
    ``a_b`` share one id, so the second client's charts drew into the first's
    section. ASCII letters, digits and ``-`` stay; any other character becomes
    ``_<hex code>_``, which no two ids share.
    """
    return "client-" + "".join(
        ch if (ch.isascii() and ch.isalnum()) or ch == "-" else f"_{ord(ch):x}_" for ch in client_id
    )


def _fmt(value: object, digits: int = 3) -> str:
    if isinstance(value, float):
        n = num(value, digits)
        return "n/a" if n is None else f"{n:.{digits}f}"
    return "n/a" if value is None else str(value)


def _summary(data: dict[str, Any]) -> str:
    h, run = data["health"], data["run"]
    open_counts = h["open_findings"]
    cards = [
        ("rounds closed", _fmt(h["rounds_closed"])),
        ("clients seen", _fmt(h["clients_seen"])),
        ("reports", _fmt(h["reports"])),
        ("global accuracy", _fmt(h["global_eval_accuracy"])),
        ("gap to centralized", _fmt(h["centralized_gap"])),
        ("last round participation", _fmt(h["last_round_participation_ratio"])),
        ("open findings", " / ".join(f"{open_counts.get(s, 0)} {s}" for s in SEVERITY_LABEL)),
    ]
    if run["dp"] is not None:
        cards.append(("epsilon spent", _fmt(h["epsilon"])))
    return "".join(
        f'<div class="card"><div class="v">{e(v)}</div><div class="k">{e(k)}</div></div>'
        for k, v in cards
    )


def _findings_table(findings: list[dict[str, Any]], sections: set[str]) -> str:
    if not findings:
        return '<p class="quiet">No findings: every detector stayed under its threshold.</p>'
    rows = []
    for f in findings:
        client = f["client_id"]
        if client is None:
            who = '<span class="quiet">federation</span>'
        elif client in sections:
            who = f'<a href="#{client_anchor(client)}">{e(client)}</a>'
        else:
            who = e(client)
        rows.append(
            f'<tr class="finding {e(f["status"])}" data-client="{e(client or "")}">'
            f'<td><span class="sev {e(f["severity"])}">{e(f["severity"])}</span></td>'
            f"<td>{e(f['status'])}</td><td>{e(f['kind'])}</td><td>{who}</td>"
            f"<td>{e(f['first_round'])}-{e(f['last_round'])}</td><td>{e(f['message'])}</td></tr>"
        )
    return (
        '<table id="findings-table"><thead><tr><th>severity</th><th>status</th><th>kind</th>'
        "<th>client</th><th>rounds</th><th>evidence</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


def _chart(chart_id: str, title: str, note: str = "") -> str:
    note_html = f'<p class="note">{note}</p>' if note else ""
    return f'<section><h2>{e(title)}</h2>{note_html}<div class="chart" id="{chart_id}"></div></section>'


def _top_features(rows: list[dict[str, Any]] | None) -> str:
    """The features that moved most (from the client's feature-drift finding)."""
    if not rows:
        return ""
    body = "".join(
        f"<tr><td>{e(r.get('feature'))}</td><td>{_fmt(r.get('psi'), 2)}</td>"
        f"<td>{_fmt(r.get('wasserstein_std'), 2)}</td><td>{_fmt(r.get('ks'), 2)}</td></tr>"
        for r in rows
    )
    return (
        '<table class="features"><thead><tr><th>feature that moved most</th><th>PSI</th>'
        f"<th>Wasserstein (std)</th><th>KS</th></tr></thead><tbody>{body}</tbody></table>"
    )


def _client_sections(data: dict[str, Any]) -> str:
    out = []
    for c in data["clients"]:
        cid, anchor = c["client_id"], client_anchor(c["client_id"])
        items = "".join(
            f'<li><span class="sev {e(f["severity"])}">{e(f["severity"])}</span> {e(f["kind"])} '
            f"(rounds {e(f['first_round'])}-{e(f['last_round'])}, {e(f['status'])}): {e(f['message'])}</li>"
            for f in c["findings"]
        )
        out.append(
            f'<section class="client" id="{anchor}" data-client="{e(cid)}"><h3>client {e(cid)}</h3>'
            f'<ul class="client-findings">{items}</ul>{_top_features(c.get("top_features"))}<div class="row">'
            f'<div class="chart small" id="{anchor}-labels"></div>'
            f'<div class="chart small" id="{anchor}-drift"></div>'
            f'<div class="chart small" id="{anchor}-loss"></div></div></section>'
        )
    left = data["clients_flagged"] - len(data["clients"])
    if left > 0:
        out.append(
            f'<p class="note">{left} more flagged clients have no section here (see the findings table).</p>'
        )
    return "".join(out) or '<p class="quiet">No client was flagged.</p>'


def render_html(data: dict[str, Any]) -> str:
    """The whole report: inline CSS, the plotting bundle, the data and the drawing script."""
    run = data["run"]
    title = f"fedsentinel report: {run['name'] or run['run_id']}"
    dm = data["drift_map"]
    map_note = (
        f"Showing the {len(dm['clients'])} clients with the highest anomaly score of {dm['clients_total']}; "
        f"{dm['clients_left_out']} clients are left out."
        if dm["clients_left_out"]
        else f"All {dm['clients_total']} clients, the highest anomaly score first."
    ) + " Colour: the larger of label and feature drift over its threshold (1 = threshold)."
    charts = [
        _chart(
            "chart-global",
            "Global accuracy and loss",
            "Global model on the clients' held-out data, by round.",
        ),
        _chart("chart-participation", "Participation by round"),
        _chart(
            "chart-fairness",
            "Fairness band",
            "Client evaluation accuracy: mean, mean of the worst 10%, worst client.",
        ),
        _chart("chart-drift-map", "Drift map", e(map_note)),
        _chart(
            "chart-divergence",
            "Update divergence",
            "Cosine of each update to the aggregate against its norm over the round median, latest analysed round; "
            "clients with a finding are marked.",
        ),
    ]
    if data["privacy"] is not None:
        charts.append(
            _chart("chart-privacy", "Privacy: epsilon spent", "Against the run's target epsilon.")
        )
    charts.append(
        _chart(
            "chart-timeline", "Findings timeline", "Each finding from its first to its last round."
        )
    )
    sections = {c["client_id"] for c in data["clients"]}
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<meta name="generator" content="fedsentinel {e(data["version"])}">
<title>{e(title)}</title>
<style>{_static("report.css")}</style>
</head><body>
<header><h1>{e(title)}</h1>
<p class="quiet">run <code>{e(run["run_id"])}</code> · registered {e(run["created_at"])} ·
{e(run["expected_clients"])} expected clients · report generated {e(data["generated_at"])} by fedsentinel {e(data["version"])}</p>
</header>
<main>
<section id="summary"><h2>Health</h2><div class="cards">{_summary(data)}</div></section>
<section id="findings"><h2>Findings</h2>{_findings_table(data["findings"], sections)}</section>
{"".join(charts)}
<section id="clients"><h2>Flagged clients</h2>{_client_sections(data)}</section>
</main>
<script type="application/json" id="report-data">{_json_for_script(data)}</script>
<script>{_static("plotly-cartesian.min.js")}</script>
<script>{_static("report.js")}</script>
</body></html>
"""


def render_index(runs: list[dict[str, Any]], report_path: str) -> str:
    """The service's front page: every run with a link to its report."""
    rows = "".join(
        f'<tr><td><a href="{e(report_path.format(run_id=r["run_id"]))}">{e(r["run_id"])}</a></td>'
        f"<td>{e(r.get('name') or '')}</td><td>{e(r['rounds'])}</td><td>{e(r['expected_clients'])}</td>"
        f"<td>{e(r['created_at'])}</td></tr>"
        for r in runs
    )
    body = (
        "<table><thead><tr><th>run</th><th>name</th><th>rounds</th><th>expected clients</th>"
        f"<th>registered</th></tr></thead><tbody>{rows}</tbody></table>"
        if runs
        else '<p class="quiet">No runs yet: register one with <code>POST /api/v1/runs</code> or run <code>fedsentinel demo</code>.</p>'
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>fedsentinel</title><link rel="icon" href="data:,">
<style>{_static("report.css")}</style></head><body>
<header><h1>fedsentinel</h1><p class="quiet">Runs and their reports ·
<a href="/docs">API docs</a> · <a href="/metrics">metrics</a></p></header>
<main><section>{body}</section></main></body></html>
"""
