"""Simulator-side summaries of a run (the client-side statistics live in :mod:`collectors.stats`)."""

from __future__ import annotations

import numpy as np

from monitor.signals.fairness import gini as fairness_gini


def fairness_summary(accuracy: np.ndarray) -> dict[str, float]:
    """Spread of per-client accuracy (DESIGN.md, "Fairness across clients").

    * worst_decile_mean: mean of the lowest ``ceil(K / 10)`` accuracies
    * gini: ``sum_ij |a_i - a_j| / (2 K^2 mean)``
    * jain: ``(sum a)^2 / (K sum a^2)``, 1 when all equal
    """
    a = np.asarray(accuracy, dtype=np.float64)
    a = a[np.isfinite(a)]
    if a.size == 0:
        return {}
    k = len(a)
    mean = float(a.mean())
    sorted_a = np.sort(a)
    worst = sorted_a[: max(1, -(-k // 10))]
    gini = float(fairness_gini(a)) if mean > 0 else 0.0  # O(k log k), not a k x k matrix
    sq = float((a**2).sum())
    return {
        "mean": mean,
        "std": float(a.std()),
        "worst": float(sorted_a[0]),
        "best": float(sorted_a[-1]),
        "worst_decile_mean": float(worst.mean()),
        "best_worst_gap": float(sorted_a[-1] - sorted_a[0]),
        "gini": gini,
        "jain": float(a.sum() ** 2 / (k * sq)) if sq > 0 else 1.0,
    }
