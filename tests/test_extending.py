"""The worked example of docs/extending.md: a detector added with its module, its tests and one line."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

from monitor.detectors import DEFAULT, DetectorState, analyze_round
from monitor.evaluation.synthetic import SyntheticFederation

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "detectors" / "train_eval_gap.py"


def _load():
    spec = importlib.util.spec_from_file_location("train_eval_gap", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


REGISTRY = DEFAULT.with_detector(_load().TrainEvalGap())  # the one registration line


def _rounds(fed: SyntheticFederation, last: int = 10):
    """Client 3 over-fits from round 4: train accuracy 0.99, eval accuracy 0.50."""
    for t in range(1, last + 1):
        d = fed.round(t)
        if t >= 4:
            d.train_accuracy[3], d.eval_accuracy[3] = 0.99, 0.50
        yield d


def _analyse(run, registry, th=None):
    th = th or registry.Thresholds()
    st, out = DetectorState(), []
    for d in _rounds(SyntheticFederation(20, alpha=0.5, seed=1)):
        a = analyze_round(run, th, st, d, registry)
        st = a.state
        out.append(a)
    return out


def test_the_example_fires_on_the_overfitting_client_from_its_second_round_over():
    fed = SyntheticFederation(20, alpha=0.5, seed=1)
    out = _analyse(fed.run(), REGISTRY)
    fired = [(a.round, s.client_id) for a in out for s in a.active if s.kind == "train_eval_gap"]
    assert fired == [(r, "c00003") for r in range(5, 11)]
    s = next(s for s in out[-1].active if s.kind == "train_eval_gap")
    assert (
        s.message
        == "client c00003: train accuracy 99% vs eval 50% (gap 0.49) for 7 rounds; threshold 0.30"
    )
    assert out[-1].client_scores["train_eval_gap"][3] == 0.99 - 0.50
    assert out[-1].client_scores["anomaly_score"][3] >= 0.49 / 0.3


def test_the_example_stays_quiet_below_its_threshold_and_leaves_the_others_alone():
    fed = SyntheticFederation(20, alpha=0.5, seed=1)
    loose = REGISTRY.Thresholds().with_overrides({"train_eval_gap_max": 0.6})
    assert not any(
        s.kind == "train_eval_gap" for a in _analyse(fed.run(), REGISTRY, loose) for s in a.active
    )
    with_it, without = _analyse(fed.run(), REGISTRY), _analyse(fed.run(), DEFAULT)
    for a, b in zip(with_it, without, strict=True):
        assert [s.to_dict() for s in a.active if s.kind != "train_eval_gap"] == [
            s.to_dict() for s in b.active
        ]


def test_registration_makes_it_part_of_the_one_source():
    assert "train_eval_gap" in REGISTRY.kinds and "train_eval_gap" not in DEFAULT.kinds
    assert "train_eval_gap_max" in REGISTRY.threshold_names()
    assert ("fl_client_train_eval_gap_ratio", "train_eval_gap") in [
        m[:2] for m in REGISTRY.client_metrics()
    ]
    assert "fl_client_train_eval_gap_streak_rounds" in [m for m, _, _ in REGISTRY.streak_metrics()]


def test_a_run_stored_before_the_detector_existed_gets_it_fresh():
    fed = SyntheticFederation(20, alpha=0.5, seed=1)
    run = fed.run()
    rounds = list(_rounds(fed, 6))
    st = DetectorState()
    for d in rounds[:5]:
        st = analyze_round(run, DEFAULT.Thresholds(), st, d).state
    back = DetectorState.from_bytes(st.to_bytes(), REGISTRY.state_types())
    a = analyze_round(run, REGISTRY.Thresholds(), back, rounds[5], REGISTRY)
    assert a.state.detectors["train_eval_gap"].streak[3] == 1  # a fresh streak, not a crash


def test_the_docs_show_the_example_verbatim():
    doc = (ROOT / "docs" / "extending.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", doc, re.S)
    assert EXAMPLE.read_text(encoding="utf-8") in blocks
