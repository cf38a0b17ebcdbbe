"""Drift map: every exported client against time (rounds), coloured by drift."""

from __future__ import annotations

from typing import Any

from monitor.dashboards.alerts import threshold
from monitor.dashboards.kit import (
    Board,
    heatmap_panel,
    query,
    run_variable,
    status_panel,
    steps,
    timeseries_panel,
)
from monitor.dashboards.overview import DRIFT_SCORE

UID = "fedsentinel-drift-map"
R = 'run="$run"'


def build() -> dict[str, Any]:
    b = Board(
        UID,
        "fedsentinel / Drift map",
        "Client x round maps of drift for the exported clients of one run (top-k by anomaly score plus "
        "every flagged client). Time runs left to right; the bottom panel maps time to the run's round.",
        tags=["drift"],
    ).variable(run_variable())

    b.row("Drift by client and round")
    b.add(heatmap_panel(
        "Drift score by client",
        "One row per client, one column per scrape: the larger of the client's label and feature drift over "
        "their thresholds (>= 1 is drift, darker is stronger). A client that turns dark and stays dark has "
        "drifted; a whole column turning dark is a federation-wide shift.",
        [query(DRIFT_SCORE, "{{client}}")], maximum=3,
    ), 24, 14)  # fmt: skip
    drift = threshold("FLClientDataDrift")
    b.add(status_panel(
        "Drift streak by client",
        f"Consecutive rounds each client has drifted (label or feature). Yellow: drifting; {drift.color}: "
        f"FLClientDataDrift fires ({drift.value:g} rounds in a row).",
        [query(f"fl_client_drift_streak_rounds{{{R}}}", "{{client}}")],
        thresholds=steps((1, "yellow"), (drift.value, drift.color), base="transparent"),
    ), 24, 12)  # fmt: skip
    b.add(heatmap_panel(
        "Label drift distance by client",
        "Jensen-Shannon distance (base 2, 0..1) of each client's label histogram to its own reference rounds.",
        [query(f"fl_client_label_drift_distance{{{R}}}", "{{client}}")], scheme="Purples", maximum=1,
    ), 12, 12)  # fmt: skip
    b.add(heatmap_panel(
        "Feature drift (PSI) by client",
        "Largest population stability index over each client's features against its reference rounds.",
        [query(f"fl_client_feature_drift_psi{{{R}}}", "{{client}}")], scheme="Blues",
    ), 12, 12)  # fmt: skip
    b.add(timeseries_panel(
        "Round",
        "The run's latest analysed round over time: read the round of any column of the maps above here.",
        [query(f"fl_run_round{{{R}}}", "analysed round"), query(f"fl_run_last_closed_round{{{R}}}", "closed round")],
        decimals=0, fill=0,
    ), 24, 5)  # fmt: skip
    return b.build()
