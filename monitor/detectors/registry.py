"""The registry: the detectors, in the order they run, and everything derived from them.

This is the single source of the finding kinds (the detectors, the exporter,
the API's ``kind`` filter), the per-client and per-round score names and the
Prometheus metrics they are exported as (with HELP), the threshold names a
run may override (the 422 that lists them), and the reference tables in
docs/signals.md (:mod:`monitor.detectors.reference`).

Adding a detector: its module, its tests, and one line in :data:`DETECTORS`
(docs/extending.md). Order matters only for detectors that read another's
step (``ctx.output(name)``): they come after it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import MISSING, asdict, field, fields, make_dataclass
from typing import Any

from monitor.detectors.base import ClientScore, Detector, FindingKind, RoundScore, Streak
from monitor.detectors.causes import OneCause
from monitor.detectors.common import (
    ANALYZER_CLIENT_SCORES,
    ANALYZER_ROUND_SCORES,
    CommonThresholds,
    ThresholdsBase,
)
from monitor.detectors.data_drift import DataDrift
from monitor.detectors.fairness import Fairness
from monitor.detectors.feature_drift import FeatureDrift
from monitor.detectors.global_health import GlobalHealth
from monitor.detectors.label_drift import LabelDrift
from monitor.detectors.label_noise import LabelNoise
from monitor.detectors.participation import Participation
from monitor.detectors.performance_drift import PerformanceDrift
from monitor.detectors.privacy_budget import PrivacyBudget
from monitor.detectors.telemetry_privacy import TelemetryPrivacy
from monitor.detectors.updates import UpdateAnomalies

__all__ = ["DETECTORS", "Registry", "DEFAULT", "Thresholds", "KINDS"]

DETECTORS: tuple[Detector, ...] = (
    LabelDrift(),
    FeatureDrift(),
    DataDrift(),  # reads label_drift and feature_drift
    PerformanceDrift(),
    LabelNoise(),
    UpdateAnomalies(),
    Participation(),
    Fairness(),
    GlobalHealth(),  # reads update_anomalies
    PrivacyBudget(),
    TelemetryPrivacy(),
    OneCause(),  # last: relates the others' signals (federation-wide drift, caused_by)
)
"""Every detector the service runs, in run order."""


def _build_thresholds(detectors: Sequence[Detector], module: str) -> type:
    """One frozen dataclass with every detector's thresholds (names must be unique)."""
    specs: list[tuple[str, Any, Any]] = []
    owner: dict[str, str] = {}
    for source, cls in [(d.name, d.Thresholds) for d in detectors] + [("common", CommonThresholds)]:
        for f in fields(cls):
            if f.name in owner:
                raise ValueError(f"threshold {f.name} is declared by {owner[f.name]} and {source}")
            owner[f.name] = source
            if f.default is MISSING:
                raise ValueError(f"threshold {f.name} of {source} has no default")
            specs.append((f.name, f.type, field(default=f.default, metadata=f.metadata)))
    cls = make_dataclass("Thresholds", specs, bases=(ThresholdsBase,), frozen=True)
    cls.__module__ = module
    cls.__doc__ = ThresholdsBase.__doc__
    cls.owner = owner  # type: ignore[attr-defined]
    return cls


def _unique(what: str, names: Iterable[str]) -> None:
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise ValueError(f"{what} {n!r} is declared twice")
        seen.add(n)


class Registry:
    """An ordered set of detectors and what they declare (checked for clashes)."""

    def __init__(self, detectors: Sequence[Detector], *, thresholds: type | None = None) -> None:
        self.detectors = tuple(detectors)
        _unique("detector", (d.name for d in self.detectors))
        _unique("finding kind", (k.name for d in self.detectors for k in d.kinds))
        _unique("client score", (s.name for s in self.client_scores()))
        _unique("metric", (m for m, _, _ in self.client_metrics() + self.round_metrics()))
        self.Thresholds = thresholds or _build_thresholds(self.detectors, __name__)

    def with_detector(self, detector: Detector) -> Registry:
        """A registry with ``detector`` appended (tests, docs/extending.md)."""
        return Registry([*self.detectors, detector])

    def state_types(self) -> dict[str, type]:
        """Detector name -> its state class (what :meth:`DetectorState.from_bytes` reads)."""
        return {d.name: d.State for d in self.detectors}

    # -- finding kinds -------------------------------------------------------

    def finding_kinds(self) -> tuple[FindingKind, ...]:
        return tuple(k for d in self.detectors for k in d.kinds)

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(k.name for k in self.finding_kinds())

    def kinds_of_scope(self, scope: str) -> tuple[str, ...]:
        return tuple(k.name for k in self.finding_kinds() if k.scope == scope)

    # -- scores and metrics --------------------------------------------------

    def client_scores(self) -> tuple[ClientScore, ...]:
        out = list(ANALYZER_CLIENT_SCORES)
        for d in self.detectors:
            out += d.client_scores
            out += [ClientScore(s.score, s.help, s.metric) for s in d.streaks]
        return tuple(out)

    def round_scores(self) -> tuple[RoundScore, ...]:
        out: list[RoundScore] = []
        for d in self.detectors:
            out += d.round_scores
            out += [
                RoundScore(f"clients_{s}", f"Clients with {s} this round.")
                for s in d.flagged_counts
            ]
        return tuple(out + list(ANALYZER_ROUND_SCORES))

    def streaks(self) -> tuple[Streak, ...]:
        return tuple(s for d in self.detectors for s in d.streaks)

    def client_metrics(self) -> tuple[tuple[str, str, str], ...]:
        """(metric, client score, HELP) of the exported per-client gauges, streaks excluded."""
        scores = list(ANALYZER_CLIENT_SCORES) + [s for d in self.detectors for s in d.client_scores]
        return tuple((s.metric, s.name, s.help) for s in scores if s.metric)

    def streak_metrics(self) -> tuple[tuple[str, str, str], ...]:
        """(metric, client score, HELP) of the per-client streak gauges."""
        return tuple((s.metric, s.score, s.help) for s in self.streaks())

    def quantile_metrics(self) -> tuple[tuple[str, str, str], ...]:
        """(metric, client score, what) of the federation quantile gauges."""
        scores = list(ANALYZER_CLIENT_SCORES) + [s for d in self.detectors for s in d.client_scores]
        return tuple((s.quantile, s.name, s.quantile_what) for s in scores if s.quantile)

    def round_metrics(self) -> tuple[tuple[str, str, str], ...]:
        """(metric, round score, HELP) of the per-run gauges."""
        return tuple((s.metric, s.name, s.help) for s in self.round_scores() if s.metric)

    def flagged_counts(self) -> tuple[str, ...]:
        """Signals of ``fl_run_clients_flagged{signal}`` (round score ``clients_<signal>``)."""
        return tuple(s for d in self.detectors for s in d.flagged_counts)

    # -- thresholds ----------------------------------------------------------

    def threshold_names(self) -> list[str]:
        return self.Thresholds.names()

    def calibrated(self) -> tuple[str, ...]:
        """Thresholds that calibration mode may set, in detector order."""
        return tuple(n for d in self.detectors for n in d.calibrated)

    def coerce(self, thresholds: Any) -> Any:
        """``thresholds`` as this registry's class (values by name; defaults for names it lacks)."""
        if isinstance(thresholds, self.Thresholds):
            return thresholds
        names = set(self.threshold_names())
        return self.Thresholds(**{k: v for k, v in asdict(thresholds).items() if k in names})


DEFAULT = Registry(DETECTORS)
"""The registry the service uses."""

Thresholds = DEFAULT.Thresholds
"""Every detector's thresholds in one frozen dataclass (``Thresholds().label_drift_js``...)."""

KINDS: tuple[str, ...] = DEFAULT.kinds
"""Every finding kind the service can raise."""
