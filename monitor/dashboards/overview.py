"""Federation overview: is the run healthy, fair, private, and who is drifting?"""

from __future__ import annotations

from typing import Any

from grafana_foundation_sdk.models.dashboard import DynamicConfigValue

from monitor.dashboards.alerts import threshold
from monitor.dashboards.kit import (
    Board,
    alert_steps,
    bargauge_panel,
    color_override,
    query,
    run_variable,
    stat_panel,
    steps,
    table_panel,
    thresholds_override,
    timeseries_panel,
)

UID = "fedsentinel-overview"
R = 'run="$run"'

DRIFT_SCORE = (
    "max by (client) ("
    f'label_replace(fl_client_label_drift_threshold_ratio{{{R}}}, "signal", "label", "", "")'
    f' or label_replace(fl_client_feature_drift_threshold_ratio{{{R}}}, "signal", "feature", "", ""))'
)
"""A client's drift score: the larger of its label and feature drift over their thresholds (>= 1 is drift)."""
TOP_DRIFTING = f"topk(10, {DRIFT_SCORE})"


def build() -> dict[str, Any]:
    b = Board(
        UID,
        "fedsentinel / Federation overview",
        "One FL run at a glance: progress, global model against its centralized baseline, participation, "
        "open findings, fairness across clients, privacy budget and the clients that drift most.",
        tags=["overview"],
    ).variable(run_variable())

    for section in (_now, _global_model, _participation, _findings, _fairness, _privacy, _clients):
        section(b)
    return b.build()


def _now(b: Board) -> None:
    """The "Now" row."""
    b.row("Now")
    b.add(stat_panel("Current round", "Latest round the engine has analysed (-1 before the first).",
                     [query(f"fl_run_round{{{R}}}")], decimals=0, graph=False), 4, 4)  # fmt: skip
    b.add(stat_panel("Global accuracy", "Global model's evaluation accuracy at the latest analysed round.",
                     [query(f"fl_run_global_eval_accuracy_ratio{{{R}}}")], unit="percentunit", decimals=1), 4, 4)  # fmt: skip
    b.add(stat_panel("Gap to centralized baseline",
                     "Centralized-baseline accuracy minus global accuracy (what federation still costs).",
                     [query(f"fl_run_centralized_gap_ratio{{{R}}}")], unit="percentunit", decimals=1), 4, 4)  # fmt: skip
    b.add(stat_panel("Participation", "Clients that reported ok over clients expected in the latest round.",
                     [query(f"fl_run_participation_ratio{{{R}}}")], unit="percentunit", decimals=0), 4, 4)  # fmt: skip
    b.add(stat_panel("Open findings", "Findings (drift, divergence, fairness, participation, privacy ...) still open.",
                     [query(f"sum(fl_run_findings_open{{{R}}})")], decimals=0,
                     thresholds=steps((1, "orange"))), 4, 4)  # fmt: skip
    b.add(stat_panel("Clients", "Distinct clients the run has seen so far.",
                     [query(f"fl_run_clients_known{{{R}}}")], decimals=0), 4, 4)  # fmt: skip


def _global_model(b: Board) -> None:
    """The "Global model" row."""
    b.row("Global model")
    b.add(timeseries_panel(
        "Global accuracy vs centralized baseline",
        "Global model's evaluation accuracy, the centralized baseline the run registered (global accuracy "
        "plus the gap), and the mean of the clients' own evaluation accuracy.",
        [query(f"fl_run_global_eval_accuracy_ratio{{{R}}}", "global model"),
         query(f"fl_run_global_eval_accuracy_ratio{{{R}}} + fl_run_centralized_gap_ratio{{{R}}}", "centralized baseline"),
         query(f"fl_run_client_accuracy_mean_ratio{{{R}}}", "client mean")],
        unit="percentunit", maximum=1, fill=0,
        overrides=[color_override("centralized baseline", "purple"), color_override("global model", "green")],
    ), 12)  # fmt: skip
    b.add(timeseries_panel(
        "Gap to centralized baseline",
        "Centralized-baseline accuracy minus the global model's accuracy; it should shrink as rounds go by.",
        [query(f"fl_run_centralized_gap_ratio{{{R}}}", "gap")], unit="percentunit",
    ), 6)  # fmt: skip
    b.add(timeseries_panel(
        "Global evaluation loss", "Global model's evaluation loss at each analysed round.",
        [query(f"fl_run_global_eval_loss{{{R}}}", "loss")],
    ), 6)  # fmt: skip
    stagnation = threshold("FLGlobalStagnation")
    b.add(timeseries_panel(
        "Stagnation streak",
        f"Consecutive rounds the global loss has not improved over the stagnation window; "
        f"FLGlobalStagnation fires at {stagnation.value:g}.",
        [query(f'fl_run_signal_streak_rounds{{{R}, kind="global_stagnation"}}', "stagnation")],
        thresholds=alert_steps(stagnation), minimum=0, decimals=0,
    ), 6)  # fmt: skip
    divergence = (threshold("FLGlobalDivergence", kind="global_divergence"),
                  threshold("FLGlobalDivergence", kind="nonfinite_aggregate"))  # fmt: skip
    b.add(timeseries_panel(
        "Divergence streak",
        f"Consecutive rounds the global loss jumped or the aggregate was non-finite; "
        f"FLGlobalDivergence fires at {divergence[0].value:g}.",
        [query(f'fl_run_signal_streak_rounds{{{R}, kind="global_divergence"}}', "loss jump"),
         query(f'fl_run_signal_streak_rounds{{{R}, kind="nonfinite_aggregate"}}', "non-finite aggregate")],
        thresholds=alert_steps(*divergence), minimum=0, decimals=0,
    ), 6)  # fmt: skip
    b.add(timeseries_panel(
        "Loss jump ratio", "Global evaluation loss over its recent best (> 1 = worse than the best so far).",
        [query(f"fl_run_global_loss_jump_ratio{{{R}}}", "loss / best")],
    ), 6)  # fmt: skip
    b.add(timeseries_panel(
        "Stagnation improvement", "Relative improvement of the global loss over the stagnation window.",
        [query(f"fl_run_global_stagnation_improvement_ratio{{{R}}}", "improvement")], unit="percentunit",
    ), 6)  # fmt: skip


def _participation(b: Board) -> None:
    """The "Participation" row."""
    b.row("Participation")
    b.add(timeseries_panel(
        "Reports vs expected",
        "Client reports in the latest analysed round against the clients sampled, and how many of them "
        "dropped out or straggled.",
        [query(f"fl_run_round_reports{{{R}}}", "reported"),
         query(f"fl_run_round_expected_clients{{{R}}}", "expected"),
         query(f"fl_run_dropouts{{{R}}}", "dropped out"),
         query(f"fl_run_stragglers{{{R}}}", "stragglers")],
        minimum=0, decimals=0, fill=0,
        overrides=[color_override("expected", "text"), color_override("dropped out", "red"), color_override("stragglers", "orange")],
    ), 12)  # fmt: skip
    b.add(timeseries_panel(
        "Participation ratio", "Clients that reported ok over clients expected, per round.",
        [query(f"fl_run_participation_ratio{{{R}}}", "participation")], unit="percentunit", minimum=0, maximum=1,
    ), 6)  # fmt: skip
    participation = threshold("FLParticipationDrop")
    b.add(timeseries_panel(
        "Participation drop streak",
        f"Consecutive rounds participation was below its threshold; FLParticipationDrop fires at "
        f"{participation.value:g}.",
        [query(f'fl_run_signal_streak_rounds{{{R}, kind="participation_drop"}}', "participation drop")],
        thresholds=alert_steps(participation), minimum=0, decimals=0,
    ), 6)  # fmt: skip


def _findings(b: Board) -> None:
    """The "Findings" row."""
    b.row("Findings")
    b.add(bargauge_panel(
        "Open findings by kind and severity",
        "Findings open now, per kind and severity (only the non-zero ones). The findings API "
        "(/api/v1/runs/{run}/findings) has each finding's sentence.",
        [query(f"sum by (kind, severity) (fl_run_findings_open{{{R}}}) > 0", "{{kind}} ({{severity}})", instant=True)],
        thresholds=steps((1, "orange")),
    ), 12, 9)  # fmt: skip
    b.add(timeseries_panel(
        "Open findings by severity", "Open findings over time, stacked by severity.",
        [query(f"sum by (severity) (fl_run_findings_open{{{R}}})", "{{severity}}")],
        stacked=True, minimum=0, decimals=0, fill=40,
        overrides=[color_override("critical", "red"), color_override("warning", "orange"), color_override("info", "blue")],
    ), 12, 9)  # fmt: skip


def _fairness(b: Board) -> None:
    """The "Fairness" row."""
    b.row("Fairness")
    b.add(timeseries_panel(
        "Fairness band",
        "Clients' evaluation accuracy of the global model: best client, mean, mean of the worst 10% and the "
        "worst client. A widening band, or a falling worst decile under a rising mean, is unfairness.",
        [query(f"fl_run_client_accuracy_max_ratio{{{R}}}", "best client"),
         query(f"fl_run_client_accuracy_mean_ratio{{{R}}}", "mean"),
         query(f"fl_run_client_accuracy_worst_decile_mean_ratio{{{R}}}", "worst-decile mean"),
         query(f"fl_run_client_accuracy_min_ratio{{{R}}}", "worst client")],
        unit="percentunit", maximum=1, fill=0,
        overrides=[color_override("best client", "blue"), color_override("mean", "green"),
                   color_override("worst-decile mean", "orange"), color_override("worst client", "red")],
    ), 12)  # fmt: skip
    fairness = threshold("FLFairnessRegression")
    b.add(timeseries_panel(
        "Fairness regression streak",
        f"Consecutive rounds the mean rose while the worst decile fell over the fairness window; "
        f"FLFairnessRegression fires at {fairness.value:g}.",
        [query(f'fl_run_signal_streak_rounds{{{R}, kind="fairness_regression"}}', "fairness regression")],
        thresholds=alert_steps(fairness), minimum=0, decimals=0,
    ), 6)  # fmt: skip
    b.add(timeseries_panel(
        "Mean vs worst-decile change",
        "Change of the mean and of the worst-decile mean client accuracy over the fairness window.",
        [query(f"fl_run_fairness_mean_change_ratio{{{R}}}", "mean"),
         query(f"fl_run_fairness_worst_decile_change_ratio{{{R}}}", "worst decile")],
        unit="percentunit", fill=0,
    ), 6)  # fmt: skip
    b.add(timeseries_panel(
        "Equality: Jain and Gini",
        "Jain's fairness index (1 = every client equal) and the Gini coefficient (0 = equal) of client accuracy.",
        [query(f"fl_run_client_accuracy_jain_index{{{R}}}", "Jain index"),
         query(f"fl_run_client_accuracy_gini_ratio{{{R}}}", "Gini")],
        minimum=0, maximum=1, fill=0,
    ), 8)  # fmt: skip
    b.add(timeseries_panel(
        "Spread", "Best minus worst client accuracy, and the standard deviation of client accuracy.",
        [query(f"fl_run_client_accuracy_gap_ratio{{{R}}}", "best - worst"),
         query(f"fl_run_client_accuracy_std_ratio{{{R}}}", "std")],
        unit="percentunit", minimum=0, fill=0,
    ), 8)  # fmt: skip
    b.add(timeseries_panel(
        "Clients below the floor and benefit of federation",
        "Share of clients whose accuracy is below the fairness floor, and the mean accuracy gain of "
        "federation over the clients' local-only baselines (where reported).",
        [query(f"fl_run_client_accuracy_below_floor_ratio{{{R}}}", "below floor"),
         query(f"fl_run_federation_benefit_mean_ratio{{{R}}}", "benefit of federation")],
        unit="percentunit", fill=0,
    ), 8)  # fmt: skip


def _privacy(b: Board) -> None:
    """The "Privacy" row."""
    b.row("Privacy")
    budget = (threshold("FLPrivacyBudgetNearlySpent"), threshold("FLPrivacyBudgetExhausted"))
    target = f"(fl_run_privacy_epsilon{{{R}}} / fl_run_privacy_budget_spent_ratio{{{R}}})"
    b.add(
        timeseries_panel(
            "Epsilon spent vs budget",
            "Differential-privacy epsilon spent so far (RDP accountant) against the run's target epsilon "
            "(epsilon over the share of the budget spent) and the level where "
            f"FLPrivacyBudgetNearlySpent fires ({budget[0].value:.0%} of the target). Empty for runs "
            "without DP settings.",
            [
                query(f"fl_run_privacy_epsilon{{{R}}}", "epsilon spent"),
                query(f"{budget[1].value:g} * {target}", "target epsilon (budget)"),
                query(f"{budget[0].value:g} * {target}", f"{budget[0].value:.0%} of target"),
            ],
            minimum=0,
            fill=0,
            decimals=2,
            overrides=[
                color_override("target epsilon (budget)", budget[1].color),
                color_override(f"{budget[0].value:.0%} of target", budget[0].color),
            ],
        ),
        12,
    )
    b.add(timeseries_panel(
        "Privacy budget spent",
        f"Epsilon spent over the target epsilon. FLPrivacyBudgetNearlySpent fires at {budget[0].value:.0%}, "
        f"FLPrivacyBudgetExhausted at {budget[1].value:.0%}.",
        [query(f"fl_run_privacy_budget_spent_ratio{{{R}}}", "budget spent")],
        unit="percentunit", minimum=0, thresholds=alert_steps(*budget),
    ), 8)  # fmt: skip
    b.add(stat_panel(
        "Budget spent now", "Share of the privacy budget spent at the latest analysed round.",
        [query(f"fl_run_privacy_budget_spent_ratio{{{R}}}")], unit="percentunit", decimals=0,
        thresholds=alert_steps(*budget), graph=False,
    ), 4)  # fmt: skip


def _clients(b: Board) -> None:
    """The "Clients" row."""
    b.row("Clients")
    drift = threshold("FLClientDataDrift")
    b.add(table_panel(
        "Top drifting clients",
        "The ten exported clients with the highest drift score (the larger of label and feature drift over "
        f"their thresholds; >= 1 is drift), how many rounds in a row they have drifted (FLClientDataDrift "
        f"fires at {drift.value:g}), and their other scores. Click a client for its drill-down.",
        [query(TOP_DRIFTING, instant=True, table_format=True),
         query(f"max by (client) (fl_client_drift_streak_rounds{{{R}}} and on (client) {TOP_DRIFTING})",
               instant=True, table_format=True),
         query(f"max by (client) (fl_client_label_drift_distance{{{R}}} and on (client) {TOP_DRIFTING})",
               instant=True, table_format=True),
         query(f"max by (client) (fl_client_feature_drift_psi{{{R}}} and on (client) {TOP_DRIFTING})",
               instant=True, table_format=True),
         query(f"max by (client) (fl_client_anomaly_score{{{R}}} and on (client) {TOP_DRIFTING})",
               instant=True, table_format=True),
         query(f"max by (client) (fl_client_eval_accuracy_ratio{{{R}}} and on (client) {TOP_DRIFTING})",
               instant=True, table_format=True)],
        rename={"client": "Client", "Value #A": "Drift score", "Value #B": "Drift streak (rounds)",
                "Value #C": "Label JS distance", "Value #D": "Max feature PSI", "Value #E": "Anomaly score",
                "Value #F": "Eval accuracy"},
        sort_by="Drift score",
        overrides=[
            thresholds_override("Drift score", (1.0, "orange"), cell="color-background"),
            thresholds_override("Drift streak (rounds)", (drift.value, drift.color), cell="color-background"),
            ("Eval accuracy", [DynamicConfigValue("unit", "percentunit")]),
            ("Client", [DynamicConfigValue("links", [{
                "title": "Client drill-down",
                "url": "/d/fedsentinel-client/?var-run=${run}&var-client=${__value.raw}&${__url_time_range}",
            }])]),
        ],
    ), 24, 9)  # fmt: skip
    b.add(timeseries_panel(
        "Anomaly score quantiles",
        "Quantiles of the clients' combined anomaly score over the latest round (1 = at a threshold), "
        "computed over every client, whatever the per-client series cap.",
        [query(f"fl_run_client_anomaly_score_quantile{{{R}}}", "q={{q}}")], fill=0,
    ), 12)  # fmt: skip
    b.add(timeseries_panel(
        "Clients flagged by signal", "Clients over threshold for each signal in the latest analysed round.",
        [query(f"fl_run_clients_flagged{{{R}}}", "{{signal}}")], stacked=True, minimum=0, decimals=0, fill=40,
    ), 12)  # fmt: skip
