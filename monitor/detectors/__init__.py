"""Detectors: turn a closed round's statistics into scores and active signals, one module per family.

* :mod:`monitor.detectors.base` - the interface every detector implements;
* :mod:`monitor.detectors.registry` - the detectors in run order, and the single
  source of finding kinds, exported metrics and threshold names;
* :mod:`monitor.detectors.analyzer` - :func:`analyze_round`: the loop over the
  registry, the combined anomaly score and calibration;
* :mod:`monitor.detectors.state` - the run's detector state, saved per detector;
* one module per family: ``label_drift``, ``feature_drift``, ``data_drift``,
  ``performance_drift``, ``label_noise``, ``updates``, ``participation``, ``fairness``,
  ``global_health``, ``privacy_budget``.

docs/extending.md shows how to add one.
"""

from monitor.detectors.analyzer import RoundAnalysis, analyze_round
from monitor.detectors.base import Detector
from monitor.detectors.inputs import RoundInput, RunConfig
from monitor.detectors.output import SEVERITIES, ActiveSignal
from monitor.detectors.registry import DEFAULT, KINDS, Registry, Thresholds
from monitor.detectors.state import DetectorState

CALIBRATED_THRESHOLDS: tuple[str, ...] = DEFAULT.calibrated()
"""Thresholds that calibration mode may set from healthy-looking scores."""

__all__ = [
    "KINDS",
    "SEVERITIES",
    "CALIBRATED_THRESHOLDS",
    "DEFAULT",
    "Detector",
    "Registry",
    "Thresholds",
    "RunConfig",
    "RoundInput",
    "DetectorState",
    "ActiveSignal",
    "RoundAnalysis",
    "analyze_round",
]
