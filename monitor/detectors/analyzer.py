"""The round analyzer: every registered detector on one closed round, then the combined score.

:func:`analyze_round` is pure: the run's configuration, thresholds, the
detector state carried from the previous round and one closed round's data
in; a new state plus everything to store and export out. The engine loads and
saves :class:`DetectorState` (``to_bytes``/``from_bytes``) and turns
:class:`ActiveSignal` s into findings with :func:`monitor.findings.reconcile`.

Everything over clients is vectorised; Python loops run over detectors,
features, classes and *flagged* clients only. docs/signals.md explains every
signal, default threshold and the noise assumptions.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from monitor.detectors.base import RoundContext
from monitor.detectors.inputs import RoundInput, RunConfig, overflow_as_infinite
from monitor.detectors.output import SEVERITIES, ActiveSignal
from monitor.detectors.registry import DEFAULT, Registry
from monitor.detectors.state import DetectorState
from monitor.schemas import RunCreate
from monitor.signals import drift

__all__ = ["RoundAnalysis", "analyze_round"]


@dataclass
class RoundAnalysis:
    round: int
    state: DetectorState
    client_ids: list[str]
    client_scores: dict[str, np.ndarray]
    round_scores: dict[str, float]
    active: list[ActiveSignal]
    thresholds: Any


def analyze_round(
    run: RunCreate | RunConfig,
    thresholds: Any,
    state: DetectorState,
    data: RoundInput,
    registry: Registry | None = None,
) -> RoundAnalysis:
    """Run every detector of ``registry`` (default: the service's) on one closed round.

    ``state`` is not modified; the returned :class:`RoundAnalysis` holds the
    new one. Thresholds in effect: ``thresholds`` with the run's own
    overrides applied on top, then calibrated values (when calibration mode
    has finished) for names the run did not override.
    """
    reg = registry or DEFAULT
    cfg = RunConfig.from_run(run)
    data.validate(cfg)
    data = overflow_as_infinite(data)  # evidence too large to compute with counts as infinite
    base_th = reg.coerce(thresholds).with_overrides(cfg.thresholds)
    st = state.copy()
    names = set(reg.threshold_names())
    cal = {k: v for k, v in st.calibrated.items() if k not in cfg.thresholds and k in names}
    th = replace(base_th, **cal) if cal else base_th
    ctx = _context(reg, cfg, th, base_th, st, data)
    scores: dict[str, np.ndarray] = {}
    rs: dict[str, float] = {}
    active: list[ActiveSignal] = []
    for det in reg.detectors:
        out = det.step(ctx, st.detectors[det.name])
        ctx.outputs[det.name] = out
        scores.update(out.client_scores)
        rs.update(out.round_scores)
        active.extend(out.active)
    for det in reg.detectors:  # detectors that relate the round's signals (one per cause)
        active, extra = det.finish(ctx, active, st.detectors[det.name])
        rs.update(extra)
    scores["anomaly_score"] = _anomaly(ctx)
    rs["clients_flagged"] = float(len({a.client_id for a in active if a.client_id is not None}))
    rs["anomaly_score_max"] = float(scores["anomaly_score"].max()) if ctx.n else float("nan")
    _calibrate(reg, st, th, base_th, ctx.calibrating, rs)
    st.last_round = ctx.round
    active.sort(key=lambda a: (SEVERITIES.index(a.severity) * -1, a.kind, a.client_id or ""))
    return RoundAnalysis(
        round=ctx.round,
        state=st,
        client_ids=ctx.ids,
        client_scores=scores,
        round_scores=rs,
        active=active,
        thresholds=th,
    )


def _context(
    reg: Registry, cfg: RunConfig, th: Any, base_th: Any, st: DetectorState, data: RoundInput
) -> RoundContext:
    """Give every detector a state (fresh where none is stored), align the clients, build the context."""
    for det in reg.detectors:
        if det.name not in st.detectors:
            st.detectors[det.name] = det.new_state(cfg, st.num_clients)
    rnd, ids = int(data.round), list(data.client_ids)
    idx = st.align(ids, rnd)
    st.last_seen_round[idx] = rnd
    ok = np.asarray(data.status, dtype=object) == "ok"
    calibrating = (
        th.calibration_rounds > 0 and not st.calibrated and st.rounds_seen < th.calibration_rounds
    )
    return RoundContext(
        cfg=cfg,
        th=th,
        base_th=base_th,
        data=data,
        round=rnd,
        ids=ids,
        idx=idx,
        client_ids=st.client_ids,
        last_seen_round=st.last_seen_round,
        rounds_seen=st.rounds_seen,
        ok=ok,
        healthy=ok & ~data.nonfinite_update & ~data.nonfinite_loss,
        noise_var=drift.noise_variance(data.noise_mechanism, data.noise_scale),
        calibrating=calibrating,
        calibration_samples=st.calibration_samples,
        calibration_limit={name: 2.0 * getattr(base_th, name) for name in reg.calibrated()},
    )


def _anomaly(ctx: RoundContext) -> np.ndarray:
    """The combined anomaly score: max over the detectors' parts (NaN/-inf count as 0); +Inf where marked."""
    anomaly = np.zeros(ctx.n)
    for part in ctx.anomaly_parts:
        anomaly = np.fmax(anomaly, np.nan_to_num(part, nan=0.0, neginf=0.0))
    anomaly = np.maximum(anomaly, 0.0)
    if ctx.anomaly_infinite is not None:
        anomaly = np.where(ctx.anomaly_infinite, np.inf, anomaly)
    return anomaly


def _calibrate(
    reg: Registry, st: DetectorState, th: Any, base_th: Any, calibrating: bool, rs: dict[str, float]
) -> None:
    """Count the round; when calibration mode ends, set thresholds from the healthy-looking samples."""
    st.rounds_seen += 1
    rs["calibrating"] = float(calibrating)
    if calibrating and st.rounds_seen >= th.calibration_rounds:
        q = 1.0 - th.calibration_false_alarm_rate
        cal: dict[str, float] = {}
        for name in reg.calibrated():
            sample = st.calibration_samples.get(name)
            if sample is None or sample.size < 20:
                continue
            floor = th.calibration_min_fraction * getattr(base_th, name)
            cal[name] = float(max(np.quantile(sample, q), floor))
        st.calibrated = cal
        st.calibration_samples = {}
    for name, value in st.calibrated.items():
        rs[f"calibrated_{name}"] = value
