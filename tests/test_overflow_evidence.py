"""Fault evidence too large to compute with (finite, but its square overflows) is a non-finite update.

A constant update of 1e308 used to make every cosine NaN and pass as a
``stale_update`` (its norm written out as a 309-digit number); an eval loss of
1e308 turned the loss statistics into NaN. Both are reported as the
``nonfinite_update`` they are, and sentences write such numbers as 1.0e+308.
"""

from __future__ import annotations

import re

import numpy as np

from monitor.detectors import DetectorState, Thresholds, analyze_round
from monitor.detectors.inputs import EVIDENCE_MAX_ABS, overflow_as_infinite
from monitor.detectors.output import fmt
from monitor.evaluation.synthetic import SyntheticFederation

LONG_NUMBER = re.compile(r"\d{12,}")


def test_sentences_write_huge_numbers_readably() -> None:
    assert fmt(1e308, 4) == "1.0e+308" and fmt(-2.5e9) == "-2.5e+09"
    assert fmt(0.41212, 4) == "0.4121" and fmt(999_999.0, 1) == "999999.0"
    assert fmt(float("nan")) == "nan"


def test_the_premise_a_huge_constant_update_overflows_its_own_norm() -> None:
    sketch = np.full(16, 1e308)
    with np.errstate(over="ignore"):
        assert np.isinf(sketch @ sketch) and np.isinf(np.linalg.norm(sketch))


def _rounds(huge_from: int):  # type: ignore[no-untyped-def]
    fed = SyntheticFederation(20, alpha=0.5, seed=11)
    run = fed.run()
    for t in range(1, 11):
        data = fed.round(t)
        if t >= huge_from:
            data.update_norm[2] = 1e308  # the same exploding update every round
            data.sketch[2] = 1e308
            data.eval_loss[3] = 1e308
        yield run, data


def test_a_constant_update_of_1e308_is_a_nonfinite_update_not_a_stale_one() -> None:
    state, seen = DetectorState(), []
    for run, data in _rounds(huge_from=4):
        analysis = analyze_round(run, Thresholds(calibration_rounds=0), state, data)
        state = analysis.state
        seen.append((data.round, analysis))
    for rnd, analysis in seen:
        by_client = {(a.client_id, a.kind): a for a in analysis.active}
        c2, c3 = analysis.client_ids[2], analysis.client_ids[3]
        assert (c2, "stale_update") not in by_client
        if rnd >= 4:
            assert (c2, "nonfinite_update") in by_client, [a.kind for a in analysis.active]
            assert (c3, "nonfinite_update") in by_client
            assert "beyond 1e150" in by_client[c2, "nonfinite_update"].message
            assert np.isinf(analysis.client_scores["anomaly_score"][2])  # exported as +Inf
        for a in analysis.active:
            assert not LONG_NUMBER.search(a.message), a.message


def test_overflow_as_infinite_flags_and_leaves_sane_values_alone() -> None:
    fed = SyntheticFederation(8, alpha=0.5, seed=2)
    data = fed.round(1)
    assert overflow_as_infinite(data) is data  # nothing huge: the same object, no copy
    data.update_norm[1] = 2 * EVIDENCE_MAX_ABS
    data.train_loss[4] = -1e200
    out = overflow_as_infinite(data)
    assert out.update_norm[1] == np.inf and out.nonfinite_update[1]
    assert out.train_loss[4] == -np.inf and out.nonfinite_loss[4]
    assert data.update_norm[1] == 2 * EVIDENCE_MAX_ABS  # the caller's data is untouched
    others = np.ones(8, dtype=bool)
    others[[1, 4]] = False
    assert not out.nonfinite_update[others].any() and not out.nonfinite_loss[others].any()
