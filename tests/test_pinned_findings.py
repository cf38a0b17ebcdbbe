"""Pinned findings on a small fixed-seed grid of simulated runs.

Every simulator fault kind of the detection benchmark once, a healthy run and
a healthy run with DP, noised histograms, partial participation and a
centralized baseline (so the privacy, centralized-gap and participation
detectors run too): 20 clients, 20 rounds, logistic regression on digits.
Each run goes through the wire schemas, :func:`monitor.detectors.analyze_round`
(detector state serialised between rounds, as the engine stores it) and the
finding lifecycle :func:`monitor.findings.reconcile` (as the engine calls it).
Every finding ever opened is pinned by kind, client, first round and final
severity in ``tests/data/pinned_findings.json``.

Why: the detectors are refactored (issue 10) and tuned (later issues); this
test says exactly which findings moved. When a change is *meant* to move
them, regenerate and commit the new file with the reason in the message::

    python -m tests.test_pinned_findings --write
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
PINNED = ROOT / "tests" / "data" / "pinned_findings.json"

FAULTS = (
    "label_drift",
    "covariate_shift",
    "label_flip",
    "noisy_labels",
    "stale_update",
    "free_rider",
    "exploding_update",
    "nonfinite_update",
    "dropout",
    "straggler",
    "fairness_regression",
)
"""The fault kinds pinned (listed, so that a new simulator fault does not move this grid)."""

EXTRAS = "healthy-extras"
CASES: tuple[str, ...] = (*FAULTS, "healthy", EXTRAS)
ROUNDS = 20
CLIENTS = 20
RESOLVE_AFTER = 3
"""The engine's default."""


def _scenario(name: str) -> Any:
    from monitor.evaluation.grid import Case, make_scenario
    from simulator.scenario import DPSettings, HistogramNoiseSettings

    fault = name if name in FAULTS else None
    scenario = make_scenario(Case(fault, 0.5, 0, ROUNDS, (CLIENTS, CLIENTS), (8, 10)))
    if name == EXTRAS:
        scenario = scenario.model_copy(
            update={
                "run_id": EXTRAS,
                "dp": DPSettings(noise_multiplier=1.0, clip_norm=1.0, target_epsilon=4.0),
                "histogram_noise": HistogramNoiseSettings(mechanism="laplace", scale=1.0),
                "sample_fraction": 0.7,
                "centralized_baseline": True,
            }
        )
    return scenario


class _AnalyzerSink:
    """A simulator sink that analyses each round in process, the way the engine does."""

    def __init__(self) -> None:
        from monitor.detectors import DetectorState, Thresholds

        self.run: Any = None
        self.thresholds = Thresholds()
        self.state_blob = DetectorState().to_bytes()
        self.reports: dict[int, list[Any]] = {}
        self.open: list[Any] = []
        self.closed: list[Any] = []

    def register_run(self, spec: dict[str, Any]) -> None:
        from monitor.schemas import RunCreate

        self.run = RunCreate.model_validate(spec)

    def report(self, run_id: str, round_number: int, reports: list[dict[str, Any]]) -> None:
        from monitor.schemas import ClientReport

        self.reports.setdefault(round_number, []).extend(
            ClientReport.model_validate(r) for r in reports
        )

    def close_round(self, run_id: str, round_number: int, close: dict[str, Any]) -> None:
        from monitor.detectors import DetectorState, RoundInput, analyze_round
        from monitor.findings import reconcile
        from monitor.schemas import RoundClose

        reports = self.reports.pop(round_number, [])
        data = RoundInput.from_reports(
            round_number, reports, RoundClose.model_validate(close), self.run
        )
        state = DetectorState.from_bytes(self.state_blob)
        analysis = analyze_round(self.run, self.thresholds, state, data)
        self.state_blob = analysis.state.to_bytes()
        changes = reconcile(
            self.open, analysis.active, analysis.round, RESOLVE_AFTER, data.client_ids
        )
        # like the store: untouched open findings (a client not observed) stay open as they were
        touched = {f.key for f in changes.updated + changes.resolved}
        self.closed.extend(changes.resolved)
        untouched = [f for f in self.open if f.key not in touched]
        self.open = untouched + changes.updated + changes.opened

    def findings(self) -> list[dict[str, Any]]:
        every = self.closed + self.open
        rows = [
            {
                "kind": f.kind,
                "client": f.client_id,
                "first_round": f.first_round,
                "severity": f.severity,
            }
            for f in every
        ]
        return sorted(rows, key=lambda r: (r["kind"], r["client"] or "", r["first_round"]))


def run_case(name: str) -> list[dict[str, Any]]:
    """Simulate one case of the grid and return its findings (sorted)."""
    import torch

    from simulator import run_scenario

    torch.set_num_threads(1)
    sink = _AnalyzerSink()
    run_scenario(_scenario(name), sink, progress=False)
    return sink.findings()


def generate() -> dict[str, list[dict[str, Any]]]:
    return {name: run_case(name) for name in CASES}


@pytest.fixture(scope="module")
def pinned() -> dict[str, list[dict[str, Any]]]:
    return json.loads(PINNED.read_text(encoding="utf-8"))


@pytest.mark.slow
@pytest.mark.parametrize("name", CASES)
def test_findings_match_the_pinned_grid(name: str, pinned: dict[str, Any]) -> None:
    assert run_case(name) == pinned[name], (
        f"findings of {name} moved; if that is intended, regenerate with "
        "`python -m tests.test_pinned_findings --write` and say why in the commit"
    )


def test_the_pinned_grid_covers_every_case_and_finds_the_faults(pinned: dict[str, Any]) -> None:
    """The pin is only useful if it holds findings: each faulty run has at least one client finding."""
    assert set(pinned) == set(CASES)
    for name in FAULTS:
        assert any(f["client"] is not None for f in pinned[name]), name


if __name__ == "__main__":
    if "--write" not in sys.argv[1:]:
        sys.exit("usage: python -m tests.test_pinned_findings --write")
    PINNED.parent.mkdir(parents=True, exist_ok=True)
    PINNED.write_text(json.dumps(generate(), indent=1) + "\n", encoding="utf-8")
    print(f"wrote {PINNED}")
