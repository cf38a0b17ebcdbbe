"""The detection-quality benchmark behind ``fedsentinel evaluate``, along its seams.

* :mod:`monitor.evaluation.grid` - which runs (fault kind x alpha x seed) and their scenarios;
* :mod:`monitor.evaluation.runner` - one case through a fresh in-process service, or a grid;
* :mod:`monitor.evaluation.scoring` - findings vs injected ground truth (pure);
* :mod:`monitor.evaluation.render` - markdown, README table, JSON, plot;
* :mod:`monitor.evaluation.synthetic` - synthetic rounds with known faults, straight from a
  parametric model (no training), for tests and bench/bench_signals.py.

The scoring names are re-exported here (they are the pure, importable part).
"""

from monitor.evaluation.scoring import (
    FEDERATION_FITTING_KINDS,
    FITTING_KINDS,
    KindSummary,
    PairResult,
    RunResult,
    score_run,
    summaries,
    summarize,
)

__all__ = [
    "FITTING_KINDS",
    "FEDERATION_FITTING_KINDS",
    "PairResult",
    "RunResult",
    "KindSummary",
    "score_run",
    "summarize",
    "summaries",
]
