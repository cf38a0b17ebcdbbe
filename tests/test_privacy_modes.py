"""Which signals work in which privacy mode: the table in docs/privacy.md, produced here.

Every fault of the pinned grid (``tests/test_pinned_findings.py``: 20 clients,
20 rounds, logistic regression on digits, analysed in process the way the
engine does) in three telemetry modes:

* ``full``: server-side update sketches, label and feature histograms;
* ``scalars``: secure aggregation, the client-side update norm, cosine to the
  previous global update and repeat flag instead of a sketch;
* ``no histograms``: sketches, but neither label nor feature histograms.

A fault counts as found in a mode when a finding of a kind that fits it
(``monitor.evaluation.scoring.FITTING_KINDS``) opens on a faulty client at or
after onset. The test asserts what each mode must and must not find, and that
docs/privacy.md shows exactly this table (regenerate with
``python -m tests.test_privacy_modes --write``).
"""

from __future__ import annotations

import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from tests.test_pinned_findings import FAULTS, _AnalyzerSink, _scenario

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "privacy.md"
START, END = "<!-- privacy:modes:start -->", "<!-- privacy:modes:end -->"
MODES: dict[str, dict[str, Any]] = {
    "full": {},
    "scalars": {"secure_aggregation": True},
    "no histograms": {"histograms": "none"},
}
HISTOGRAM_FAULTS = ("label_drift", "covariate_shift")
"""Faults only histograms show (the update and the loss barely move)."""
UPDATE_FAULTS = ("stale_update", "free_rider", "exploding_update", "nonfinite_update")
"""Faults of the update itself: every mode must find them."""


@cache
def found(fault: str, mode: str) -> tuple[str, ...]:
    """Kinds of the fitting findings opened on faulty clients at or after onset (sorted)."""
    import torch

    from monitor.evaluation.scoring import FITTING_KINDS
    from simulator import run_scenario

    torch.set_num_threads(1)
    scenario = _scenario(fault).model_copy(update=MODES[mode])
    scenario = type(scenario).model_validate(scenario.model_dump())  # validate the options
    sink = _AnalyzerSink()
    result = run_scenario(scenario, sink, progress=False)
    onset = {str(t["client_id"]): int(t["onset_round"]) for t in result.ground_truth}
    fits = FITTING_KINDS[fault]
    kinds = {
        f["kind"]
        for f in sink.findings()
        if f["client"] in onset and f["kind"] in fits and f["first_round"] >= onset[f["client"]]
    }
    return tuple(sorted(kinds))


def table() -> str:
    lines = [
        "| fault | " + " | ".join(MODES) + " |",
        "|---|" + "---|" * len(MODES),
    ]
    for fault in FAULTS:
        cells = [", ".join(found(fault, m)) or "-" for m in MODES]
        lines.append(f"| {fault} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _doc_table() -> str:
    text = DOC.read_text(encoding="utf-8")
    return text.split(START, 1)[1].split(END, 1)[0].strip("\n") + "\n"


def write() -> None:
    body = table()  # minutes of simulation: read the page only afterwards
    text = DOC.read_text(encoding="utf-8")
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    DOC.write_text(f"{head}{START}\n{body}{END}{tail}", encoding="utf-8")


pytestmark = pytest.mark.slow


@pytest.mark.parametrize("fault", UPDATE_FAULTS)
def test_update_faults_are_found_in_every_mode(fault: str) -> None:
    for mode in MODES:
        assert found(fault, mode), f"{fault} missed in mode {mode}"


@pytest.mark.parametrize("fault", HISTOGRAM_FAULTS)
def test_histogram_faults_need_histograms(fault: str) -> None:
    assert found(fault, "full") and found(fault, "scalars")
    drift = {"label_drift", "feature_drift", "data_drift"}
    assert not drift & set(found(fault, "no histograms"))


def test_docs_show_this_table() -> None:
    assert _doc_table() == table(), (
        "docs/privacy.md's modes table is stale: python -m tests.test_privacy_modes --write"
    )


if __name__ == "__main__":
    if "--write" in sys.argv:
        write()
    print(table())
