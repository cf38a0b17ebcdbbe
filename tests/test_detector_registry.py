"""The detector registry is the one source of kinds, scores, metrics and threshold names;
detector state is saved per detector and survives a layout change of one of them."""

from __future__ import annotations

import ast
import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from monitor.detectors import (
    DEFAULT,
    KINDS,
    DetectorState,
    Registry,
    Thresholds,
    analyze_round,
    reference,
)
from monitor.detectors.label_drift import LabelDrift, LabelDriftState
from monitor.evaluation.synthetic import Fault, SyntheticFederation
from monitor.schemas import DPConfig

ROOT = Path(__file__).resolve().parents[1]
FORMAT1 = ROOT / "tests" / "data" / "detector_state_format1.npz"


def _federation() -> SyntheticFederation:
    """The federation the format-1 fixture was written from (by the pre-plug-in analyzer)."""
    return SyntheticFederation(
        30,
        alpha=0.5,
        seed=4,
        faults=[
            Fault("label_shift", [3], 4, magnitude=0.6),
            Fault("stale", [5], 3),
            Fault("missing", [7], 3),
        ],
        dp=DPConfig(noise_multiplier=1.0, clip_norm=1.0, sample_rate=0.1, target_epsilon=3.0),
    )


def _run_rounds(fed, run, rounds, state=None, registry=None):
    st = state or DetectorState()
    out = []
    for t in rounds:
        a = analyze_round(run, Thresholds(calibration_rounds=8), st, fed.round(t), registry)
        st = a.state
        out.append(a)
    return out


# ---------------------------------------------------------------------------
# one source


def test_docs_reference_tables_are_current():
    text = reference.DOC.read_text(encoding="utf-8")
    assert reference.update(text, reference.render()) == text, (
        "docs/signals.md's registry tables are stale: run `python -m monitor.detectors.reference --write`"
    )


def test_every_emitted_kind_and_score_is_declared_with_its_scope():
    magnitude = {"label_shift": 0.6, "feature_shift": 1.5, "straggler": 10.0}
    kinds = ("label_shift", "feature_shift", "sign_flip", "stale", "free_rider", "nonfinite")
    faults = [Fault(k, [i], 4, magnitude=magnitude.get(k, 1.0)) for i, k in enumerate(kinds)]
    faults += [Fault("straggler", [8], 4, magnitude=10.0), Fault("dropout", [9], 4)]
    fed = SyntheticFederation(40, alpha=0.5, seed=3, faults=faults, centralized_accuracy=0.99)
    out = _run_rounds(fed, fed.run(), range(1, 13))
    scope = {k.name: k.scope for k in DEFAULT.finding_kinds()}
    seen = {s.kind for a in out for s in a.active}
    assert len(seen) >= 8, seen
    for a in out:
        for s in a.active:
            assert s.kind in scope, s.kind
            assert (s.client_id is None) == (scope[s.kind] == "federation"), s
        assert set(a.client_scores) == {c.name for c in DEFAULT.client_scores()}
        declared = {r.name for r in DEFAULT.round_scores()}
        for name in a.round_scores:
            assert name in declared or name.startswith("calibrated_"), name


def test_exported_metrics_come_from_the_registry_and_are_unique():
    from monitor import exporter

    assert exporter.FINDING_KINDS == KINDS
    assert set(exporter.RUN_SIGNAL_KINDS) == {
        k.name for k in DEFAULT.finding_kinds() if k.scope == "federation"
    }
    names = [m for m, _, _ in exporter.CLIENT_SCORE_METRICS + exporter.STREAK_METRICS]
    names += [m for m, _, _ in exporter.RUN_SCORE_METRICS + exporter.QUANTILE_SCORES]
    assert len(names) == len(set(names))
    assert all(m.startswith(("fl_client_", "fl_run_")) for m in names)


def _literal_kind_collections(path: Path) -> list[tuple[int, int]]:
    kinds = set(KINDS)
    hits = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Tuple | ast.List | ast.Set):
            n = sum(isinstance(e, ast.Constant) and e.value in kinds for e in node.elts)
            if n > len(kinds) // 2:
                hits.append((node.lineno, n))
    return hits


def test_no_module_outside_the_detectors_repeats_the_list_of_kinds():
    """A literal tuple/list/set holding most finding kinds is a second copy of the registry."""
    files = [
        p
        for pkg in ("monitor", "collectors", "simulator", "bench")
        for p in (ROOT / pkg).rglob("*.py")
        if "detectors" not in p.parts
    ]
    copies = {str(p.relative_to(ROOT)): h for p in files if (h := _literal_kind_collections(p))}
    assert not copies, copies


def test_a_clash_between_detectors_is_refused():
    with pytest.raises(ValueError, match="detector 'label_drift' is declared twice"):
        Registry([LabelDrift(), LabelDrift()])

    class Copycat(LabelDrift):
        name = "copycat"
        streaks = ()

    with pytest.raises(ValueError, match="finding kind 'label_drift' is declared twice"):
        Registry([LabelDrift(), Copycat()])


def test_threshold_overrides_are_validated_against_the_registry_names():
    with pytest.raises(ValueError) as err:
        Thresholds().with_overrides({"label_drift_jss": 0.3})
    msg = str(err.value)
    assert "unknown threshold name(s) label_drift_jss" in msg
    for name in Thresholds.names():
        assert name in msg
    assert set(Thresholds.names()) == {
        f for d in DEFAULT.detectors for f in d.threshold_defaults()
    } | {
        "critical_factor",
        "calibration_rounds",
        "calibration_false_alarm_rate",
        "calibration_min_fraction",
    }


# ---------------------------------------------------------------------------
# per-detector state


def _with_layout(blob: bytes, detector: str, layout: int) -> bytes:
    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    header = json.loads(bytes(arrays["__header__"]).decode())
    header["detectors"][detector]["layout"] = layout
    arrays["__header__"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def test_a_detector_state_of_another_layout_restarts_that_detector_alone(caplog):
    fed = _federation()
    run = fed.run("layout")
    st = _run_rounds(fed, run, range(1, 6))[-1].state
    blob = _with_layout(st.to_bytes(), "label_drift", 99)
    with caplog.at_level(logging.WARNING, logger="fedsentinel.detectors"):
        back = DetectorState.from_bytes(blob, label="layout")
    assert "label_drift" not in back.detectors
    msg = caplog.text
    assert (
        "detector label_drift of run layout has layout 99" in msg
        and "starting that detector fresh" in msg
    )
    for name, s in st.detectors.items():
        if name != "label_drift":
            assert DetectorState(detectors={name: s}).equals(
                DetectorState(detectors={name: back.detectors[name]})
            )
    # the next round runs; label drift rebuilds its reference while the others carry on
    a = analyze_round(run, Thresholds(), back, fed.round(6))
    fresh = a.state.detectors["label_drift"]
    assert fresh.ref_label_rounds.max() == 1 and not any(s.kind == "label_drift" for s in a.active)
    b = analyze_round(run, Thresholds(), st, fed.round(6))
    assert np.array_equal(
        a.client_scores["update_cosine_previous"],
        b.client_scores["update_cosine_previous"],
        equal_nan=True,
    )


def test_a_detector_state_that_does_not_read_restarts_that_detector(caplog):
    fed = _federation()
    st = _run_rounds(fed, fed.run(), range(1, 4))[-1].state
    broken = DetectorState.from_bytes(st.to_bytes())
    s = broken.detectors["label_drift"]
    assert isinstance(s, LabelDriftState)
    s.ref_label_rounds = s.ref_label_rounds[:-1]  # one row short
    with caplog.at_level(logging.WARNING, logger="fedsentinel.detectors"):
        back = DetectorState.from_bytes(broken.to_bytes())
    assert "label_drift" not in back.detectors and "does not read" in caplog.text
    assert set(back.detectors) == set(st.detectors) - {"label_drift"}


FORMAT1_LATER = {"one_cause", "telemetry_privacy", "label_noise"}
"""Detectors added after format 1: a format-1 state has no section for them, so they start fresh."""


def test_a_format1_state_continues_exactly_as_the_analysis_from_scratch():
    """tests/data/detector_state_format1.npz was written by the one-function analyzer after 5 rounds."""
    fed = _federation()
    run = fed.run("format1")
    from monitor.detectors.state import _FORMAT1

    old = DetectorState.from_bytes(FORMAT1.read_bytes())
    # detectors and fields added since format 1 (issue 11: one_cause, label_noise, the divergence memory,
    # the last ok round, the aggregate norm history) start fresh; everything format 1 held is kept
    assert set(old.detectors) == {d.name for d in DEFAULT.detectors} - FORMAT1_LATER
    scratch = _run_rounds(fed, run, range(1, 9))
    new = scratch[4].state
    for name, mapping in _FORMAT1.items():
        for field_name in mapping:
            a, b = (
                getattr(old.detectors[name], field_name),
                getattr(new.detectors[name], field_name),
            )
            assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), (name, field_name)
    resumed = _run_rounds(fed, run, range(6, 9), state=old)
    for a, b in zip(resumed, scratch[5:], strict=True):
        assert [s.to_dict() for s in a.active] == [s.to_dict() for s in b.active]
    assert any(s.kind == "label_drift" for s in resumed[-1].active)


def test_a_new_detector_starts_fresh_on_a_stored_run():
    fed = _federation()
    run = fed.run("fresh")
    st = _run_rounds(fed, run, range(1, 4))[-1].state
    del st.detectors["fairness"]
    a = analyze_round(run, Thresholds(), st, fed.round(4))
    assert a.state.detectors["fairness"].mean_history.size == 1
