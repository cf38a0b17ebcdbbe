"""What belongs to the analyzer rather than to one detector.

* :class:`CommonThresholds` - severity and calibration parameters every detector shares;
* :class:`ThresholdsBase` - the methods of the combined ``Thresholds`` dataclass
  that :mod:`monitor.detectors.registry` builds from every detector's thresholds;
* the analyzer's own scores: the combined anomaly score and the round's summary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

from monitor.detectors.base import ClientScore, RoundScore, threshold

__all__ = [
    "CommonThresholds",
    "ThresholdsBase",
    "ANALYZER_CLIENT_SCORES",
    "ANALYZER_ROUND_SCORES",
]


@dataclass(frozen=True)
class CommonThresholds:
    critical_factor: float = threshold(
        2.0, "A finding is critical at this multiple of its threshold (else warning)."
    )
    calibration_rounds: int = threshold(
        0, "Rounds of calibration mode at the start of a run (0 = off)."
    )
    calibration_false_alarm_rate: float = threshold(
        0.001, "Calibrated thresholds are this upper quantile of the healthy-looking scores."
    )
    calibration_min_fraction: float = threshold(
        0.5, "A calibrated threshold is at least this fraction of its default."
    )


class ThresholdsBase:
    """Methods of the combined, frozen ``Thresholds`` dataclass (one field per threshold name).

    Every field can be overridden per run by name through
    ``RunCreate.thresholds`` (see :meth:`with_overrides`); docs/signals.md
    lists each with its default and meaning.
    """

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]  # type: ignore[arg-type]

    @classmethod
    def help(cls) -> dict[str, str]:
        """One line per threshold name."""
        return {f.name: f.metadata.get("help", "") for f in fields(cls)}  # type: ignore[arg-type]

    def with_overrides(self, overrides: dict[str, float] | None) -> Any:
        """A copy with ``overrides`` applied by name.

        Raises ``ValueError`` naming the unknown names and listing the valid
        ones, or a negative value, or a fraction where a whole number of rounds
        is expected (the API maps it to 422).
        """
        if not overrides:
            return self
        valid = self.names()
        unknown = sorted(set(overrides) - set(valid))
        if unknown:
            raise ValueError(
                f"unknown threshold name(s) {', '.join(unknown)}; valid names: {', '.join(valid)}"
            )
        types = {f.name: f.type for f in fields(self)}  # type: ignore[arg-type]
        out: dict[str, Any] = {}
        for name, value in overrides.items():
            value = float(value)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"threshold {name} must be a finite number >= 0, got {value}")
            if types[name] in (int, "int"):
                if value != int(value):
                    raise ValueError(f"threshold {name} must be a whole number, got {value}")
                out[name] = int(value)
            else:
                out[name] = value
        return replace(self, **out)  # type: ignore[type-var]

    @classmethod
    def for_run(cls, run: Any) -> Any:
        """Defaults with the run's overrides applied."""
        return cls().with_overrides(run.thresholds)


ANALYZER_CLIENT_SCORES = (
    ClientScore(
        "anomaly_score",
        "Client's combined anomaly score (max of its signals over their thresholds; 1 = at "
        "threshold; +Inf = non-finite update).",
        metric="fl_client_anomaly_score",
        quantile="fl_run_client_anomaly_score_quantile",
        quantile_what="client anomaly score",
    ),
)
ANALYZER_ROUND_SCORES = (
    RoundScore("clients_flagged", "Distinct clients with an active client-level signal."),
    RoundScore("anomaly_score_max", "Largest client anomaly score of the round."),
    RoundScore(
        "calibrating",
        "1 while the run's thresholds are being calibrated.",
        "fl_run_calibrating",
    ),
    RoundScore(
        "calibrated_<name>", "The calibrated value of threshold <name> (after calibration)."
    ),
)
