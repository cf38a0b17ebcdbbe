"""The alert thresholds the dashboards draw, mirrored from ``dashboards/prometheus/rules/fl-alerts.yml``.

The rules file is the source of truth for alerting; the dashboards need the
same numbers at build time (and ``fedsentinel grafana push`` runs from an
installed package, where the rules file is not). ``tests/dashboards`` parses
the rules file and fails when a value here differs from the rule's ``>= N``,
and when a panel that plots the metric does not draw the value.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["AlertThreshold", "ALERT_THRESHOLDS", "threshold"]


@dataclass(frozen=True)
class AlertThreshold:
    """An alert rule of the form ``metric{matchers} >= value``."""

    alert: str
    metric: str
    value: float
    severity: str
    matchers: dict[str, str] = field(default_factory=dict)

    @property
    def color(self) -> str:
        return "red" if self.severity == "critical" else "orange"


ALERT_THRESHOLDS: tuple[AlertThreshold, ...] = (
    AlertThreshold("FLClientDataDrift", "fl_client_drift_streak_rounds", 3, "warning"),
    AlertThreshold("FLClientPerformanceDrift", "fl_client_performance_drift_streak_rounds", 3, "warning"),
    AlertThreshold("FLClientLabelNoise", "fl_client_label_noise_streak_rounds", 2, "warning"),
    AlertThreshold("FLClientUpdateAnomaly", "fl_client_update_anomaly_streak_rounds", 3, "warning"),
    AlertThreshold("FLClientNonFiniteUpdate", "fl_client_nonfinite_update_streak_rounds", 1, "critical"),
    AlertThreshold("FLClientStaleOrFreeRiding", "fl_client_stale_update_streak_rounds", 3, "warning"),
    AlertThreshold("FLClientStaleOrFreeRiding", "fl_client_free_rider_streak_rounds", 3, "warning"),
    AlertThreshold("FLFairnessRegression", "fl_run_signal_streak_rounds", 2, "warning",
                   {"kind": "fairness_regression"}),
    AlertThreshold("FLParticipationDrop", "fl_run_signal_streak_rounds", 2, "warning",
                   {"kind": "participation_drop"}),
    AlertThreshold("FLGlobalStagnation", "fl_run_signal_streak_rounds", 3, "warning",
                   {"kind": "global_stagnation"}),
    AlertThreshold("FLGlobalDivergence", "fl_run_signal_streak_rounds", 1, "critical",
                   {"kind": "global_divergence"}),
    AlertThreshold("FLGlobalDivergence", "fl_run_signal_streak_rounds", 1, "critical",
                   {"kind": "nonfinite_aggregate"}),
    AlertThreshold("FLPrivacyBudgetNearlySpent", "fl_run_privacy_budget_spent_ratio", 0.8, "warning"),
    AlertThreshold("FLPrivacyBudgetExhausted", "fl_run_privacy_budget_spent_ratio", 1.0, "critical"),
)  # fmt: skip


def threshold(alert: str, metric: str | None = None, **matchers: str) -> AlertThreshold:
    """The one threshold of ``alert`` (narrowed by metric and matchers when the rule has several)."""
    found = [
        t for t in ALERT_THRESHOLDS
        if t.alert == alert and (metric is None or t.metric == metric)
        and all(t.matchers.get(k) == v for k, v in matchers.items())
    ]  # fmt: skip
    if len(found) != 1:
        raise KeyError(f"{alert} {metric or ''} {matchers or ''}: {len(found)} thresholds match")
    return found[0]
