"""Client drill-down: one client of one run, its drift, performance, updates, streaks and findings."""

from __future__ import annotations

from typing import Any

from monitor.dashboards.alerts import threshold
from monitor.dashboards.kit import (
    Board,
    alert_steps,
    client_variable,
    query,
    run_variable,
    stat_panel,
    status_panel,
    steps,
    table_panel,
    thresholds_override,
    timeseries_panel,
)
from monitor.detectors.registry import DEFAULT as REGISTRY

UID = "fedsentinel-client"
R = 'run="$run"'
RC = 'run="$run", client="$client"'

ALERTING_STREAKS = (
    ("drift", "FLClientDataDrift", "data drift"),
    ("performance_drift", "FLClientPerformanceDrift", "performance drift"),
    ("update_anomaly", "FLClientUpdateAnomaly", "update anomaly"),
    ("stale_update", "FLClientStaleOrFreeRiding", "stale update"),
    ("free_rider", "FLClientStaleOrFreeRiding", "free rider"),
)
"""(streak metric stem, alert rule, legend) of the streaks an alert fires on at the same count."""

_LEGEND = {"nonfinite_update": "non-finite update"}
SIGNALS = tuple(
    (s.name, _LEGEND.get(s.name, s.name.replace("_", " ")))
    for s in REGISTRY.streaks()
    if s.name != "drift"
)
"""(streak, legend) of every per-client signal streak except the combined drift one, from the registry."""
"""Every per-client signal with a streak gauge (a finding of that kind is open while it is > 0)."""


def build() -> dict[str, Any]:
    b = Board(
        UID,
        "fedsentinel / Client drill-down",
        "One client of one run: its drift scores against its own reference and the federation, its "
        "evaluation accuracy against the federation's, its update norm and direction, and how many rounds "
        "in a row each signal has been over threshold. Only exported clients (top-k by anomaly plus every "
        "flagged client) have series.",
        tags=["client"],
    )
    b.variable(run_variable()).variable(client_variable())

    for section in (_now, _drift, _performance, _updates, _streaks_and_findings):
        section(b)
    return b.build()


def _now(b: Board) -> None:
    """The client now: anomaly score, accuracy and the alerting streaks as stats."""
    drift = threshold("FLClientDataDrift")
    perf = threshold("FLClientPerformanceDrift")
    update = threshold("FLClientUpdateAnomaly")
    nonfinite = threshold("FLClientNonFiniteUpdate")
    b.row("Client $client now")
    b.add(stat_panel("Anomaly score",
                     "Combined anomaly score: the largest of the client's signals over their thresholds "
                     "(1 = at a threshold; +Inf = non-finite update).",
                     [query(f"fl_client_anomaly_score{{{RC}}}")], decimals=2,
                     thresholds=steps((1, "orange"))), 4, 4)  # fmt: skip
    b.add(stat_panel("Evaluation accuracy", "Accuracy of the global model on the client's local held-out data.",
                     [query(f"fl_client_eval_accuracy_ratio{{{RC}}}")], unit="percentunit", decimals=1), 4, 4)  # fmt: skip
    b.add(stat_panel("Drift streak", f"Rounds in a row with label or feature drift; FLClientDataDrift fires at "
                     f"{drift.value:g}.", [query(f"fl_client_drift_streak_rounds{{{RC}}}")], decimals=0,
                     thresholds=alert_steps(drift)), 4, 4)  # fmt: skip
    b.add(stat_panel("Performance drift streak", f"Rounds in a row past an evaluation-loss change point; "
                     f"FLClientPerformanceDrift fires at {perf.value:g}.",
                     [query(f"fl_client_performance_drift_streak_rounds{{{RC}}}")], decimals=0,
                     thresholds=alert_steps(perf)), 4, 4)  # fmt: skip
    b.add(stat_panel("Update anomaly streak", f"Rounds in a row with an outlying update norm or direction; "
                     f"FLClientUpdateAnomaly fires at {update.value:g}.",
                     [query(f"fl_client_update_anomaly_streak_rounds{{{RC}}}")], decimals=0,
                     thresholds=alert_steps(update)), 4, 4)  # fmt: skip
    b.add(stat_panel("Non-finite streak", f"Rounds in a row with NaN/Inf in the update or losses; "
                     f"FLClientNonFiniteUpdate fires at {nonfinite.value:g}.",
                     [query(f"fl_client_nonfinite_update_streak_rounds{{{RC}}}")], decimals=0,
                     thresholds=alert_steps(nonfinite)), 4, 4)  # fmt: skip


def _drift(b: Board) -> None:
    """Label and feature drift against the reference and the federation."""
    b.row("Drift")
    b.add(timeseries_panel(
        "Label drift distance",
        "Jensen-Shannon distance (base 2, 0..1) of the client's label histogram to its own reference rounds "
        "and to the federation's label histogram.",
        [query(f"fl_client_label_drift_distance{{{RC}}}", "vs own reference"),
         query(f"fl_client_label_drift_federation_distance{{{RC}}}", "vs federation")],
        minimum=0, maximum=1, fill=0,
    ), 8)  # fmt: skip
    b.add(timeseries_panel(
        "Feature drift",
        "Largest population stability index over the client's features, and the largest Wasserstein-1 "
        "distance in reference standard deviations, both against its reference rounds.",
        [query(f"fl_client_feature_drift_psi{{{RC}}}", "max PSI"),
         query(f"fl_client_feature_drift_wasserstein{{{RC}}}", "max Wasserstein (std)")],
        minimum=0, fill=0,
    ), 8)  # fmt: skip
    b.add(timeseries_panel(
        "Drift over threshold",
        "Label and feature drift over the engine's thresholds (the run's calibrated or overridden ones); "
        ">= 1 counts as drift for the streak.",
        [query(f"fl_client_label_drift_threshold_ratio{{{RC}}}", "label"),
         query(f"fl_client_feature_drift_threshold_ratio{{{RC}}}", "feature")],
        minimum=0, fill=0, thresholds=steps((1, "orange")),
    ), 8)  # fmt: skip


def _performance(b: Board) -> None:
    """Accuracy against the federation; loss and its change point."""
    b.row("Performance")
    b.add(timeseries_panel(
        "Evaluation accuracy vs the federation",
        "The global model's accuracy on this client's held-out data against the mean and the worst-decile "
        "mean over all clients, and the global accuracy.",
        [query(f"fl_client_eval_accuracy_ratio{{{RC}}}", "$client"),
         query(f"fl_run_client_accuracy_mean_ratio{{{R}}}", "client mean"),
         query(f"fl_run_client_accuracy_worst_decile_mean_ratio{{{R}}}", "worst-decile mean"),
         query(f"fl_run_global_eval_accuracy_ratio{{{R}}}", "global")],
        unit="percentunit", maximum=1, fill=0,
    ), 8)  # fmt: skip
    b.add(timeseries_panel(
        "Evaluation loss and change point",
        "The client's evaluation loss of the global model, and the Page-Hinkley statistic on its relative "
        "log loss (a change point once it passes the engine's threshold).",
        [query(f"fl_client_eval_loss{{{RC}}}", "eval loss"),
         query(f"fl_client_eval_loss_changepoint{{{RC}}}", "Page-Hinkley")],
        minimum=0, fill=0,
    ), 8)  # fmt: skip
    b.add(timeseries_panel(
        "Training vs held-out loss",
        "ln(training loss / the global model's loss on the client's held-out split): a property of the "
        "client that moves slowly; corrupted training labels raise it (the training loss is measured "
        "against them). With the label-noise evidence: the CUSUM of its move from the client's usual, "
        "less the round's median move (label noise at the engine's alarm level).",
        [query(f"fl_client_train_eval_loss_log_ratio{{{RC}}}", "ln(train / eval loss)"),
         query(f"fl_client_label_noise_evidence{{{RC}}}", "label-noise evidence")],
        fill=0,
    ), 8)  # fmt: skip


def _updates(b: Board) -> None:
    """Update norm, direction and robust z-scores."""
    b.row("Updates")
    b.add(timeseries_panel(
        "Update norm ratio",
        "The client's update L2 norm over the round's median client norm (1 = typical), with the "
        "federation's median and 90th percentile of the same ratio.",
        [query(f"fl_client_update_norm_ratio{{{RC}}}", "$client"),
         query(f'fl_run_client_update_norm_ratio_quantile{{{R}, q="0.5"}}', "federation median"),
         query(f'fl_run_client_update_norm_ratio_quantile{{{R}, q="0.9"}}', "federation p90")],
        minimum=0, fill=0,
    ), 8)  # fmt: skip
    b.add(timeseries_panel(
        "Update cosine to the aggregate",
        "Cosine between the client's update sketch and the aggregate update sketch (1 = same direction), "
        "with the federation's median.",
        [query(f"fl_client_update_cosine{{{RC}}}", "$client"),
         query(f'fl_run_client_update_cosine_quantile{{{R}, q="0.5"}}', "federation median")],
        minimum=-1, maximum=1, fill=0,
    ), 8)  # fmt: skip
    b.add(timeseries_panel(
        "Robust z-scores",
        "Median/MAD z-scores within the round: update norm (high = outsized), update cosine (low = "
        "divergent direction) and wall time (high = straggler).",
        [query(f"fl_client_update_norm_robust_z{{{RC}}}", "norm"),
         query(f"fl_client_update_cosine_robust_z{{{RC}}}", "cosine"),
         query(f"fl_client_wall_time_robust_z{{{RC}}}", "wall time")],
        fill=0,
    ), 8)  # fmt: skip


def _streaks_and_findings(b: Board) -> None:
    """Streaks (alerting and not), active findings by kind, open findings."""
    nonfinite = threshold("FLClientNonFiniteUpdate")
    noise = threshold("FLClientLabelNoise")
    b.row("Streaks and findings")
    alerting = [
        threshold(rule, f"fl_client_{stem}_streak_rounds") for stem, rule, _ in ALERTING_STREAKS
    ]
    b.add(timeseries_panel(
        "Alerting streaks",
        "Consecutive rounds over threshold for the signals whose alert fires at "
        f"{alerting[0].value:g} rounds (data drift, performance drift, update anomaly, stale update, free rider).",
        [query(f"fl_client_{stem}_streak_rounds{{{RC}}}", legend) for stem, _, legend in ALERTING_STREAKS],
        thresholds=alert_steps(*alerting), minimum=0, decimals=0, fill=0,
    ), 12)  # fmt: skip
    b.add(timeseries_panel(
        "Non-finite update and label noise streaks",
        f"Consecutive rounds with NaN/Inf in the client's update or losses (FLClientNonFiniteUpdate, "
        f"critical, fires at {nonfinite.value:g}) and with its training loss risen against its held-out "
        f"loss (FLClientLabelNoise fires at {noise.value:g}).",
        [query(f"fl_client_nonfinite_update_streak_rounds{{{RC}}}", "non-finite"),
         query(f"fl_client_label_noise_streak_rounds{{{RC}}}", "label noise")],
        thresholds=alert_steps(nonfinite, noise), minimum=0, decimals=0,
    ), 6)  # fmt: skip
    b.add(timeseries_panel(
        "Other streaks",
        "Consecutive rounds of label drift, feature drift, straggling and dropout (no alert of their own: "
        "drift alerts through the combined drift streak, dropout through participation).",
        [query(f"fl_client_label_drift_streak_rounds{{{RC}}}", "label drift"),
         query(f"fl_client_feature_drift_streak_rounds{{{RC}}}", "feature drift"),
         query(f"fl_client_straggler_streak_rounds{{{RC}}}", "straggler"),
         query(f"fl_client_dropout_streak_rounds{{{RC}}}", "dropout")],
        minimum=0, decimals=0, fill=0,
    ), 6)  # fmt: skip
    b.add(status_panel(
        "Active findings by kind",
        "Each row is a signal of this client; a coloured cell means a finding of that kind was open "
        "(the signal's streak, in rounds). Orange/red where the kind's alert fires. The findings API "
        "(/api/v1/runs/{run}/findings?client=...) has each finding's sentence.",
        [query(f"fl_client_{stem}_streak_rounds{{{RC}}}", legend) for stem, legend in SIGNALS],
        thresholds=steps((1, "yellow"), *{(a.value, a.color) for a in alerting}, base="transparent"),
        overrides=[thresholds_override("non-finite update", (nonfinite.value, nonfinite.color), base="transparent"),
                   thresholds_override("label noise", (1, "yellow"), (noise.value, noise.color), base="transparent")],
    ), 24, 9)  # fmt: skip
    b.add(table_panel(
        "Open findings",
        "The client's findings open now, by kind and severity (fl_client_findings_open). Each finding's "
        "evidence sentence, first and last round: /api/v1/runs/{run}/findings?client=... .",
        [query(f"fl_client_findings_open{{{RC}}}", instant=True, table_format=True)],
        hide=("Time", "Value", "__name__", "job", "instance", "run", "client"),
        sort_by="severity",
    ), 24, 6)  # fmt: skip
