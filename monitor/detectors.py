"""The round analyzer: signals -> per-client scores, round scores, active signals.

:func:`analyze_round` is pure: it takes the run's configuration, thresholds,
the detector state carried from the previous round and one closed round's
data, and returns a new state plus everything to store and export. The engine
loads and saves :class:`DetectorState` (``to_bytes``/``from_bytes``) and turns
:class:`ActiveSignal` s into findings with :func:`monitor.findings.reconcile`.

Everything over clients is vectorised; Python loops run over features,
classes and *flagged* clients only. docs/signals.md explains every signal,
default threshold and the noise assumptions.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np

from monitor.schemas import ClientReport, RoundClose, RunCreate
from monitor.signals import changepoint, divergence, drift, fairness, health, participation, privacy

__all__ = [
    "KINDS",
    "SEVERITIES",
    "CALIBRATED_THRESHOLDS",
    "Thresholds",
    "RunConfig",
    "RoundInput",
    "DetectorState",
    "ActiveSignal",
    "RoundAnalysis",
    "analyze_round",
]

KINDS = (
    "data_drift",
    "label_drift",
    "feature_drift",
    "performance_drift",
    "update_divergence",
    "stale_update",
    "free_rider",
    "nonfinite_update",
    "fairness_regression",
    "participation_drop",
    "dropout",
    "straggler",
    "global_stagnation",
    "global_divergence",
    "nonfinite_aggregate",
    "centralized_gap",
    "privacy_budget",
)
SEVERITIES = ("info", "warning", "critical")

STREAKS = (
    "label_drift",
    "feature_drift",
    "drift",
    "performance_drift",
    "update_anomaly",
    "stale_update",
    "free_rider",
    "nonfinite_update",
    "straggler",
    "dropout",
)
"""Per-client consecutive-round counters, exported as ``<name>_streak_rounds``."""

CALIBRATED_THRESHOLDS = (
    "label_drift_js",
    "feature_drift_psi",
    "feature_drift_wasserstein",
    "feature_drift_ks",
    "changepoint_lambda",
    "update_robust_z",
    "straggler_robust_z",
)
"""Thresholds that calibration mode may set from healthy-looking scores."""

_HISTORY_CAP = 64
_CALIBRATION_CAP = 50_000
_CALIBRATION_PER_ROUND = 5_000


# ---------------------------------------------------------------------------
# Thresholds


@dataclass(frozen=True)
class Thresholds:
    """Detector thresholds and parameters, with documented defaults.

    Every field can be overridden per run by name through
    ``RunCreate.thresholds`` (see :meth:`with_overrides`); docs/signals.md says
    why each default was chosen.
    """

    # drift (judged against each client's own first `reference_rounds` rounds)
    reference_rounds: int = 3
    label_drift_js: float = 0.20
    """JS distance (base 2) beyond the noise floor."""
    feature_drift_psi: float = 0.25
    feature_drift_wasserstein: float = 0.20
    """Wasserstein-1 in reference standard deviations beyond the noise floor."""
    feature_drift_ks: float = 0.20
    drift_null_alpha: float = 1e-3
    """Per-statistic false-alarm level of the noise floor added to drift thresholds."""
    # performance drift (Page-Hinkley on relative log eval loss)
    changepoint_delta: float = 0.20
    changepoint_lambda: float = 1.5
    changepoint_min_rounds: int = 5
    # update divergence
    update_robust_z: float = 3.5
    update_norm_min_ratio: float = 3.0
    """The norm side of divergence also needs norm >= this x the round median (or <= 1/this)."""
    update_cosine_min_drop: float = 0.5
    """The cosine side also needs the cosine this far below the round's median cosine."""
    update_divergence_min_streak: int = 2
    stale_cosine_min: float = 0.999999
    stale_norm_rtol: float = 1e-6
    free_rider_norm_ratio: float = 0.01
    # fairness
    fairness_window: int = 5
    fairness_worst_drop: float = 0.02
    fairness_floor: float = 0.5
    # participation
    participation_min_ratio: float = 0.8
    dropout_streak_rounds: int = 3
    straggler_robust_z: float = 3.5
    straggler_min_ratio: float = 2.0
    """A straggler also takes at least this many times the round's median wall time."""
    # global health
    stagnation_window: int = 10
    stagnation_min_improvement: float = 0.005
    loss_jump_ratio: float = 1.5
    centralized_gap_max: float = 0.05
    centralized_gap_min_rounds: int = 10
    # privacy
    privacy_budget_warn_share: float = 0.8
    # severity
    critical_factor: float = 2.0
    # calibration (0 rounds = off)
    calibration_rounds: int = 0
    calibration_false_alarm_rate: float = 0.001
    calibration_min_fraction: float = 0.5

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def with_overrides(self, overrides: dict[str, float] | None) -> Thresholds:
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
        types = {f.name: f.type for f in fields(self)}
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
        return replace(self, **out)

    @classmethod
    def for_run(cls, run: RunCreate) -> Thresholds:
        """Defaults with the run's overrides applied."""
        return cls().with_overrides(run.thresholds)


# ---------------------------------------------------------------------------
# Inputs


@dataclass(frozen=True)
class RunConfig:
    """What the detectors need from a run's registration (:class:`monitor.schemas.RunCreate`)."""

    run_id: str
    num_classes: int
    class_names: list[str] | None
    feature_names: list[str]
    feature_bin_edges: list[np.ndarray]
    sketch_dim: int
    expected_clients: int
    dp_noise_multiplier: float | None = None
    dp_sample_rate: float | None = None
    dp_delta: float | None = None
    dp_target_epsilon: float | None = None
    centralized_accuracy: float | None = None
    thresholds: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_run(cls, run: RunCreate | RunConfig) -> RunConfig:
        if isinstance(run, RunConfig):
            return run
        dp = run.dp
        return cls(
            run_id=run.run_id,
            num_classes=run.task.num_classes,
            class_names=list(run.task.class_names) if run.task.class_names else None,
            feature_names=list(run.task.feature_names),
            feature_bin_edges=[np.asarray(e, dtype=np.float64) for e in run.feature_bin_edges],
            sketch_dim=run.sketch_dim,
            expected_clients=run.expected_clients,
            dp_noise_multiplier=dp.noise_multiplier if dp else None,
            dp_sample_rate=dp.sample_rate if dp else None,
            dp_delta=dp.delta if dp else None,
            dp_target_epsilon=dp.target_epsilon if dp else None,
            centralized_accuracy=run.centralized_accuracy,
            thresholds=dict(run.thresholds),
        )

    def class_name(self, i: int) -> str:
        return f"class {self.class_names[i]}" if self.class_names else f"class {i}"


def _nan(n: int) -> np.ndarray:
    return np.full(n, np.nan)


@dataclass
class RoundInput:
    """One closed round, as arrays aligned with ``client_ids`` (NaN = not reported).

    ``label_hist`` is ``(n, C)``, ``feature_hists`` a list of ``F`` arrays
    ``(n, B_f)`` and ``sketch`` ``(n, D)``, each with all-NaN rows for clients
    that did not send them. ``nonfinite_update``/``nonfinite_loss`` mark
    clients that sent NaN/inf as evidence of a fault.
    """

    round: int
    client_ids: list[str]
    status: np.ndarray
    num_examples: np.ndarray
    train_loss: np.ndarray
    train_accuracy: np.ndarray
    eval_loss: np.ndarray
    eval_accuracy: np.ndarray
    local_accuracy: np.ndarray
    wall_time_seconds: np.ndarray
    update_norm: np.ndarray
    clipped: np.ndarray
    nonfinite_update: np.ndarray
    nonfinite_loss: np.ndarray
    label_hist: np.ndarray
    feature_hists: list[np.ndarray]
    sketch: np.ndarray
    noise_mechanism: np.ndarray
    noise_scale: np.ndarray
    global_eval_loss: float | None = None
    global_eval_accuracy: float | None = None
    aggregate_update_norm: float | None = None
    aggregate_sketch: np.ndarray | None = None
    num_sampled: int | None = None
    epsilon: float | None = None

    @property
    def n(self) -> int:
        return len(self.client_ids)

    @classmethod
    def empty(cls, round: int, client_ids: list[str], run: RunCreate | RunConfig) -> RoundInput:
        """All clients 'ok' and nothing reported: a base for tests and builders to fill in."""
        cfg = RunConfig.from_run(run)
        n = len(client_ids)
        return cls(
            round=round,
            client_ids=list(client_ids),
            status=np.full(n, "ok", dtype=object),
            num_examples=_nan(n),
            train_loss=_nan(n),
            train_accuracy=_nan(n),
            eval_loss=_nan(n),
            eval_accuracy=_nan(n),
            local_accuracy=_nan(n),
            wall_time_seconds=_nan(n),
            update_norm=_nan(n),
            clipped=_nan(n),
            nonfinite_update=np.zeros(n, dtype=bool),
            nonfinite_loss=np.zeros(n, dtype=bool),
            label_hist=np.full((n, cfg.num_classes), np.nan),
            feature_hists=[np.full((n, len(e) - 1), np.nan) for e in cfg.feature_bin_edges],
            sketch=np.full((n, cfg.sketch_dim), np.nan),
            noise_mechanism=np.full(n, None, dtype=object),
            noise_scale=np.zeros(n),
        )

    @classmethod
    def from_reports(
        cls,
        round: int,
        reports: list[ClientReport],
        close: RoundClose | None,
        run: RunCreate | RunConfig,
    ) -> RoundInput:
        """Build arrays from wire-format reports (one loop over reports; the store may build arrays directly)."""
        ids = [r.client_id for r in reports]
        d = cls.empty(round, ids, run)

        def num(v: float | None) -> float:
            return np.nan if v is None else float(v)

        for i, r in enumerate(reports):
            d.status[i] = str(r.status.value if hasattr(r.status, "value") else r.status)
            d.num_examples[i] = num(r.num_examples)
            d.train_loss[i] = num(r.train_loss)
            d.train_accuracy[i] = num(r.train_accuracy)
            d.eval_loss[i] = num(r.eval_loss)
            d.eval_accuracy[i] = num(r.eval_accuracy)
            d.local_accuracy[i] = num(r.local_accuracy)
            d.wall_time_seconds[i] = num(r.wall_time_seconds)
            d.update_norm[i] = num(r.update_norm)
            d.clipped[i] = np.nan if r.clipped is None else float(r.clipped)
            nf = r.update_norm is not None and not math.isfinite(r.update_norm)
            if r.update_sketch is not None:
                sk = np.asarray(r.update_sketch, dtype=np.float64)
                d.sketch[i] = sk
                nf = nf or not bool(np.isfinite(sk).all())
            d.nonfinite_update[i] = nf
            d.nonfinite_loss[i] = any(
                v is not None and not math.isfinite(v) for v in (r.train_loss, r.eval_loss)
            )
            if r.label_histogram is not None:
                d.label_hist[i] = r.label_histogram
            for f, h in enumerate(r.feature_histograms or []):
                d.feature_hists[f][i] = h
            if r.histogram_noise is not None:
                d.noise_mechanism[i] = str(r.histogram_noise.mechanism.value)
                d.noise_scale[i] = r.histogram_noise.scale
        if close is not None:
            d.global_eval_loss = close.global_eval_loss
            d.global_eval_accuracy = close.global_eval_accuracy
            d.aggregate_update_norm = close.aggregate_update_norm
            if close.aggregate_sketch is not None:
                d.aggregate_sketch = np.asarray(close.aggregate_sketch, dtype=np.float64)
            d.num_sampled = close.num_sampled
            d.epsilon = close.epsilon
        return d

    def validate(self, cfg: RunConfig) -> None:
        """Raise ValueError on shapes that do not fit the run or on duplicate client ids."""
        n = self.n
        if len(set(self.client_ids)) != n:
            raise ValueError("round input has duplicate client ids")
        for name in [
            "status",
            "num_examples",
            "train_loss",
            "train_accuracy",
            "eval_loss",
            "eval_accuracy",
            "local_accuracy",
            "wall_time_seconds",
            "update_norm",
            "clipped",
            "nonfinite_update",
            "nonfinite_loss",
            "noise_mechanism",
            "noise_scale",
        ]:
            if np.shape(getattr(self, name)) != (n,):
                raise ValueError(
                    f"{name} must have shape ({n},), got {np.shape(getattr(self, name))}"
                )
        if np.shape(self.label_hist) != (n, cfg.num_classes):
            raise ValueError(f"label_hist must have shape ({n}, {cfg.num_classes})")
        if len(self.feature_hists) != len(cfg.feature_bin_edges):
            raise ValueError(f"feature_hists must hold {len(cfg.feature_bin_edges)} arrays")
        for f, (h, e) in enumerate(zip(self.feature_hists, cfg.feature_bin_edges, strict=True)):
            if np.shape(h) != (n, len(e) - 1):
                raise ValueError(f"feature_hists[{f}] must have shape ({n}, {len(e) - 1})")
        if np.shape(self.sketch) != (n, cfg.sketch_dim):
            raise ValueError(f"sketch must have shape ({n}, {cfg.sketch_dim})")


# ---------------------------------------------------------------------------
# State


@dataclass
class DetectorState:
    """Everything the detectors carry between rounds, aligned by client id.

    Per-client arrays have one row per client ever seen (``client_ids``, in
    order of first appearance). Serialises to bytes with :meth:`to_bytes`
    (an uncompressed ``.npz`` plus a JSON header; no pickle) and back exactly
    with :meth:`from_bytes`. About ``8 * (C + sum(B_f) + 3F + 20) + 4D`` bytes
    per client (~2 MB per 1,000 clients at C=10, 20x10 bins, D=128).
    """

    rounds_seen: int = 0
    last_round: int | None = None
    dp_steps: int = 0
    calibrated: dict[str, float] = field(default_factory=dict)
    client_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype="<U1"))
    first_round: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    last_seen_round: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    ref_label_counts: np.ndarray | None = None
    ref_label_rounds: np.ndarray | None = None
    ref_label_noise_var: np.ndarray | None = None
    ref_feature_counts: list[np.ndarray] = field(default_factory=list)
    ref_feature_rounds: np.ndarray | None = None
    ref_feature_noise_var: np.ndarray | None = None
    ph_n: np.ndarray | None = None
    ph_mean: np.ndarray | None = None
    ph_cum: np.ndarray | None = None
    ph_cum_min: np.ndarray | None = None
    prev_sketch: np.ndarray | None = None
    prev_norm: np.ndarray | None = None
    streaks: dict[str, np.ndarray] = field(default_factory=dict)
    global_loss_history: np.ndarray = field(default_factory=lambda: np.zeros(0))
    fairness_mean_history: np.ndarray = field(default_factory=lambda: np.zeros(0))
    fairness_worst_history: np.ndarray = field(default_factory=lambda: np.zeros(0))
    calibration_samples: dict[str, np.ndarray] = field(default_factory=dict)

    _SCALARS = ("rounds_seen", "last_round", "dp_steps", "calibrated")
    _DICTS = ("streaks", "calibration_samples")

    @property
    def num_clients(self) -> int:
        return int(self.client_ids.shape[0])

    def _shape_for(self, cfg: RunConfig) -> None:
        if self.ref_label_counts is not None:
            if self.ref_label_counts.shape[1] != cfg.num_classes or len(
                self.ref_feature_counts
            ) != len(cfg.feature_bin_edges):
                raise ValueError("detector state does not match the run's classes/features")
            return
        k = self.num_clients
        nf = len(cfg.feature_bin_edges)
        self.ref_label_counts = np.zeros((k, cfg.num_classes))
        self.ref_label_rounds = np.zeros(k, dtype=np.int64)
        self.ref_label_noise_var = np.zeros(k)
        self.ref_feature_counts = [np.zeros((k, len(e) - 1)) for e in cfg.feature_bin_edges]
        self.ref_feature_rounds = np.zeros((k, nf), dtype=np.int64)
        self.ref_feature_noise_var = np.zeros((k, nf))
        ph = changepoint.PageHinkleyState.empty(k)
        self.ph_n, self.ph_mean, self.ph_cum, self.ph_cum_min = ph.n, ph.mean, ph.cum, ph.cum_min
        self.prev_sketch = np.full((k, cfg.sketch_dim), np.nan, dtype=np.float32)
        self.prev_norm = np.full(k, np.nan)
        self.streaks = {s: np.zeros(k, dtype=np.int64) for s in STREAKS}

    def _per_client(self) -> list[str]:
        return [
            "first_round",
            "last_seen_round",
            "ref_label_counts",
            "ref_label_rounds",
            "ref_label_noise_var",
            "ref_feature_rounds",
            "ref_feature_noise_var",
            "ph_n",
            "ph_mean",
            "ph_cum",
            "ph_cum_min",
            "prev_sketch",
            "prev_norm",
        ]

    def _align(self, ids: list[str], round_: int) -> np.ndarray:
        """Indices of ``ids`` in the state, appending rows for new clients."""
        new_ids = np.asarray(ids, dtype=str)
        known = self.client_ids
        if known.size:
            order = np.argsort(known, kind="stable")
            pos = np.searchsorted(known, new_ids, sorter=order)
            pos_c = np.minimum(pos, known.size - 1)
            found = known[order[pos_c]] == new_ids
            idx = np.where(found, order[pos_c], -1)
        else:
            found = np.zeros(new_ids.size, dtype=bool)
            idx = np.full(new_ids.size, -1)
        n_new = int((~found).sum())
        if n_new:
            k = known.size
            self.client_ids = np.concatenate([known, new_ids[~found]])
            idx[~found] = np.arange(k, k + n_new)
            fills = {
                "first_round": round_,
                "last_seen_round": round_,
                "ph_cum_min": np.inf,
                "prev_sketch": np.nan,
                "prev_norm": np.nan,
            }
            for name in self._per_client():
                a = getattr(self, name)
                pad = np.full((n_new,) + a.shape[1:], fills.get(name, 0), dtype=a.dtype)
                setattr(self, name, np.concatenate([a, pad]))
            self.ref_feature_counts = [
                np.concatenate([a, np.zeros((n_new, a.shape[1]))]) for a in self.ref_feature_counts
            ]
            self.streaks = {
                s: np.concatenate([a, np.zeros(n_new, dtype=np.int64)])
                for s, a in self.streaks.items()
            }
        return idx

    def copy(self) -> DetectorState:
        out = replace(self)
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, np.ndarray):
                setattr(out, f.name, v.copy())
            elif isinstance(v, list):
                setattr(out, f.name, [a.copy() for a in v])
            elif isinstance(v, dict):
                setattr(
                    out,
                    f.name,
                    {k: (a.copy() if isinstance(a, np.ndarray) else a) for k, a in v.items()},
                )
        return out

    def to_bytes(self) -> bytes:
        """Serialise: an ``.npz`` archive whose ``__header__`` entry is UTF-8 JSON."""
        arrays: dict[str, np.ndarray] = {}
        header: dict[str, Any] = {"version": 1}
        for name in self._SCALARS:
            header[name] = getattr(self, name)
        header["n_feature_refs"] = len(self.ref_feature_counts)
        header["streak_names"] = list(self.streaks)
        header["calibration_names"] = list(self.calibration_samples)
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in self._SCALARS or v is None:
                continue
            if isinstance(v, np.ndarray):
                arrays[f.name] = v
            elif isinstance(v, list):
                for i, a in enumerate(v):
                    arrays[f"{f.name}/{i}"] = a
            elif isinstance(v, dict):
                for k, a in v.items():
                    arrays[f"{f.name}/{k}"] = a
        arrays["__header__"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, blob: bytes) -> DetectorState:
        with np.load(io.BytesIO(blob), allow_pickle=False) as z:
            header = json.loads(bytes(z["__header__"]).decode())
            if header.get("version") != 1:
                raise ValueError(f"unsupported detector state version {header.get('version')}")
            kw: dict[str, Any] = {name: header[name] for name in cls._SCALARS}
            kw["calibrated"] = {k: float(v) for k, v in header["calibrated"].items()}
            for f in fields(cls):
                if f.name in kw or f.name in cls._DICTS or f.name == "ref_feature_counts":
                    continue
                if f.name in z.files:
                    kw[f.name] = z[f.name]
            kw["ref_feature_counts"] = [
                z[f"ref_feature_counts/{i}"] for i in range(header["n_feature_refs"])
            ]
            kw["streaks"] = {s: z[f"streaks/{s}"] for s in header["streak_names"]}
            kw["calibration_samples"] = {
                s: z[f"calibration_samples/{s}"] for s in header["calibration_names"]
            }
        return cls(**kw)

    def equals(self, other: DetectorState) -> bool:
        """Exact equality, NaN == NaN, dtypes included (for tests and sanity checks)."""

        def same(a: Any, b: Any) -> bool:
            if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
                return (
                    isinstance(a, np.ndarray)
                    and isinstance(b, np.ndarray)
                    and a.dtype == b.dtype
                    and a.shape == b.shape
                    and bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
                )
            if isinstance(a, list | tuple):
                return isinstance(b, list | tuple) and len(a) == len(b) and all(map(same, a, b))
            if isinstance(a, dict):
                return (
                    isinstance(b, dict)
                    and a.keys() == b.keys()
                    and all(same(a[k], b[k]) for k in a)
                )
            return a == b

        return all(same(getattr(self, f.name), getattr(other, f.name)) for f in fields(self))


# ---------------------------------------------------------------------------
# Output


@dataclass
class ActiveSignal:
    """One signal over its threshold this round (client-level when ``client_id`` is set)."""

    kind: str
    severity: str
    client_id: str | None
    score: float
    threshold: float
    message: str
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str | None]:
        return (self.kind, self.client_id)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RoundAnalysis:
    round: int
    state: DetectorState
    client_ids: list[str]
    client_scores: dict[str, np.ndarray]
    round_scores: dict[str, float]
    active: list[ActiveSignal]
    thresholds: Thresholds


# ---------------------------------------------------------------------------
# Helpers


def _f(x: Any, nd: int = 2) -> str:
    return f"{float(x):.{nd}f}"


def _pct(x: float) -> str:
    return f"{100.0 * float(x):.0f}%"


def _json_num(x: Any) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _severity(ratio: float, critical_factor: float) -> str:
    return "critical" if ratio >= critical_factor else "warning"


def _collect(samples: dict[str, np.ndarray], name: str, values: np.ndarray, limit: float) -> None:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v) & (v <= limit)]
    if v.size > _CALIBRATION_PER_ROUND:
        v = v[:: int(math.ceil(v.size / _CALIBRATION_PER_ROUND))]
    old = samples.get(name, np.zeros(0))
    samples[name] = np.concatenate([old, v])[-_CALIBRATION_CAP:]


def _effective_thresholds(th: Thresholds, cfg: RunConfig, state: DetectorState) -> Thresholds:
    th = th.with_overrides(cfg.thresholds)
    cal = {k: v for k, v in state.calibrated.items() if k not in cfg.thresholds}
    return replace(th, **cal) if cal else th


# ---------------------------------------------------------------------------
# The analyzer


def analyze_round(
    run: RunCreate | RunConfig,
    thresholds: Thresholds,
    state: DetectorState,
    data: RoundInput,
) -> RoundAnalysis:
    """Run every detector on one closed round.

    ``state`` is not modified; the returned :class:`RoundAnalysis` holds the
    new one. Thresholds in effect: ``thresholds`` with the run's own
    overrides applied on top, then calibrated values (when calibration mode
    has finished) for names the run did not override.
    """
    cfg = RunConfig.from_run(run)
    data.validate(cfg)
    base_th = thresholds.with_overrides(cfg.thresholds)
    st = state.copy()
    st._shape_for(cfg)
    th = _effective_thresholds(thresholds, cfg, st)
    n = data.n
    rnd = int(data.round)
    ids = list(data.client_ids)
    idx = st._align(ids, rnd)
    st.last_seen_round[idx] = rnd

    status = np.asarray(data.status, dtype=object)
    ok = status == "ok"
    noise_v = drift.noise_variance(data.noise_mechanism, data.noise_scale)
    calibrating = (
        th.calibration_rounds > 0 and not st.calibrated and st.rounds_seen < th.calibration_rounds
    )
    cal_limit = {name: 2.0 * getattr(base_th, name) for name in CALIBRATED_THRESHOLDS}
    healthy = ok & ~data.nonfinite_update & ~data.nonfinite_loss

    scores: dict[str, np.ndarray] = {}
    active: list[ActiveSignal] = []
    cf = th.critical_factor

    # -- label drift -----------------------------------------------------------
    lh = drift.denoise(data.label_hist)
    _, lh_total = drift.normalize_rows(lh)
    has_lh = ok & np.isfinite(lh_total)
    ref_counts = st.ref_label_counts[idx]
    ref_rounds = st.ref_label_rounds[idx]
    ready = has_lh & (ref_rounds >= th.reference_rounds)
    js_ref = _nan(n)
    label_thr = _nan(n)
    if ready.any():
        r = ref_counts[ready]
        n_ref = r.sum(axis=1)
        m = (r + 0.5) / (n_ref + 0.5 * cfg.num_classes)[:, None]
        js_ref[ready] = drift.js_distance(r, lh[ready])
        qn = drift.js_null_quantile(
            m,
            lh_total[ready],
            n_ref,
            noise_v[ready],
            st.ref_label_noise_var[idx][ready],
            th.drift_null_alpha,
        )
        label_thr[ready] = np.sqrt(th.label_drift_js**2 + qn)
        if calibrating:
            _collect(
                st.calibration_samples,
                "label_drift_js",
                np.sqrt(np.clip(js_ref[ready] ** 2 - qn, 0, None))[healthy[ready]],
                cal_limit["label_drift_js"],
            )
    js_fed = _nan(n)
    if has_lh.any():
        pooled = lh[has_lh].sum(axis=0)
        js_fed[has_lh] = drift.js_distance(lh[has_lh], pooled)
    building = has_lh & (ref_rounds < th.reference_rounds)
    if building.any():
        bi = idx[building]
        st.ref_label_counts[bi] += lh[building]
        st.ref_label_rounds[bi] += 1
        st.ref_label_noise_var[bi] += noise_v[building]
    label_ratio = js_ref / label_thr
    label_flag = ready & (js_ref > label_thr)
    scores["label_drift_js_reference"] = js_ref
    scores["label_drift_js_federation"] = js_fed
    scores["label_drift_threshold"] = label_thr
    scores["label_drift_ratio"] = label_ratio

    # -- feature drift ---------------------------------------------------------
    nf = len(cfg.feature_bin_edges)
    psi_max, w_max, ks_max, feat_ratio = _nan(n), _nan(n), _nan(n), _nan(n)
    feat_top = np.full(n, -1, dtype=np.int64)
    cal_feat = {
        k: np.full(n, -np.inf)
        for k in ("feature_drift_psi", "feature_drift_wasserstein", "feature_drift_ks")
    }
    feat_ready_any = np.zeros(n, dtype=bool)
    per_feature: dict[str, list[np.ndarray]] = {"psi": [], "w": [], "ks": []}
    for f, edges in enumerate(cfg.feature_bin_edges):
        fh = drift.denoise(data.feature_hists[f])
        _, tot = drift.normalize_rows(fh)
        has = ok & np.isfinite(tot)
        rc = st.ref_feature_counts[f][idx]
        rr = st.ref_feature_rounds[idx, f]
        rdy = has & (rr >= th.reference_rounds)
        psi_f, w_f, ks_f = _nan(n), _nan(n), _nan(n)
        if rdy.any():
            feat_ready_any |= rdy
            r = rc[rdy]
            cur = fh[rdy]
            b = r.shape[1]
            n_ref = r.sum(axis=1)
            m = (r + 0.5) / (n_ref + 0.5 * b)[:, None]
            v_ref = st.ref_feature_noise_var[idx, f][rdy]
            n_cur = tot[rdy]
            scale = drift.hist_std(r, edges)
            psi_f[rdy] = drift.psi(r, cur, drift.psi_smoothing(n_cur, n_ref, noise_v[rdy], v_ref))
            w_f[rdy] = drift.wasserstein_hist(r, cur, edges, scale)
            ks_f[rdy] = drift.ks_hist(r, cur)
            a = th.drift_null_alpha
            q_psi = drift.psi_null_quantile(m, n_cur, n_ref, noise_v[rdy], v_ref, a)
            q_w = drift.wasserstein_null_quantile(
                m, n_cur, n_ref, noise_v[rdy], v_ref, edges, scale, a
            )
            q_ks = drift.ks_null_quantile(m, n_cur, n_ref, noise_v[rdy], v_ref, a)
            ratio = np.maximum.reduce(
                [
                    psi_f[rdy] / (th.feature_drift_psi + q_psi),
                    w_f[rdy] / (th.feature_drift_wasserstein + q_w),
                    ks_f[rdy] / (th.feature_drift_ks + q_ks),
                ]
            )
            full = _nan(n)
            full[rdy] = ratio
            better = np.nan_to_num(full, nan=-np.inf) > np.nan_to_num(feat_ratio, nan=-np.inf)
            feat_top = np.where(better, f, feat_top)
            feat_ratio = np.fmax(feat_ratio, full)
            cal_feat["feature_drift_psi"][rdy] = np.maximum(
                cal_feat["feature_drift_psi"][rdy], psi_f[rdy] - q_psi
            )
            cal_feat["feature_drift_wasserstein"][rdy] = np.maximum(
                cal_feat["feature_drift_wasserstein"][rdy], w_f[rdy] - q_w
            )
            cal_feat["feature_drift_ks"][rdy] = np.maximum(
                cal_feat["feature_drift_ks"][rdy], ks_f[rdy] - q_ks
            )
        psi_max, w_max, ks_max = np.fmax(psi_max, psi_f), np.fmax(w_max, w_f), np.fmax(ks_max, ks_f)
        per_feature["psi"].append(psi_f)
        per_feature["w"].append(w_f)
        per_feature["ks"].append(ks_f)
        bld = has & (rr < th.reference_rounds)
        if bld.any():
            bi = idx[bld]
            st.ref_feature_counts[f][bi] += fh[bld]
            st.ref_feature_rounds[bi, f] += 1
            st.ref_feature_noise_var[bi, f] += noise_v[bld]
    if calibrating:
        for k, v in cal_feat.items():
            _collect(st.calibration_samples, k, v[feat_ready_any & healthy], cal_limit[k])
    feat_flag = feat_ready_any & (np.nan_to_num(feat_ratio, nan=0.0) > 1.0)
    scores["feature_drift_psi_max"] = psi_max
    scores["feature_drift_wasserstein_max"] = w_max
    scores["feature_drift_ks_max"] = ks_max
    scores["feature_drift_ratio"] = feat_ratio
    scores["feature_drift_top_feature"] = np.where(feat_top >= 0, feat_top, np.nan).astype(
        np.float64
    )

    # -- performance drift -----------------------------------------------------
    rel = changepoint.relative_log_loss(data.eval_loss, ok & ~data.nonfinite_loss)
    ph_state = changepoint.PageHinkleyState(
        st.ph_n[idx], st.ph_mean[idx], st.ph_cum[idx], st.ph_cum_min[idx]
    )
    ph_state, ph_stat, perf_flag = changepoint.page_hinkley_update(
        ph_state,
        rel,
        delta=th.changepoint_delta,
        threshold=th.changepoint_lambda,
        min_instances=th.changepoint_min_rounds,
    )
    st.ph_n[idx], st.ph_mean[idx], st.ph_cum[idx], st.ph_cum_min[idx] = (
        ph_state.n,
        ph_state.mean,
        ph_state.cum,
        ph_state.cum_min,
    )
    ph_eligible = np.isfinite(ph_stat) & ((ph_state.n >= th.changepoint_min_rounds) | perf_flag)
    if calibrating:
        _collect(
            st.calibration_samples,
            "changepoint_lambda",
            ph_stat[ph_eligible & healthy],
            cal_limit["changepoint_lambda"],
        )
    scores["eval_loss_relative_log"] = rel
    scores["eval_loss_changepoint"] = ph_stat

    # -- update divergence -----------------------------------------------------
    sketch = np.asarray(data.sketch, dtype=np.float64)
    norm = np.asarray(data.update_norm, dtype=np.float64)
    nonfinite = (
        data.nonfinite_update
        | data.nonfinite_loss
        | np.isinf(norm)
        | (divergence.nonfinite_rows(sketch) if sketch.shape[1] else False)
    )
    has_sk = ok & (np.isfinite(sketch).all(axis=1) if sketch.shape[1] else np.zeros(n, dtype=bool))
    agg = data.aggregate_sketch
    cos = _nan(n)
    if agg is not None and has_sk.any() and np.isfinite(agg).all():
        cos[has_sk] = divergence.cosine_to(sketch[has_sk], agg)
    good_norm = ok & np.isfinite(norm)
    norm_src = norm
    if not good_norm.any() and has_sk.any():
        norm_src = np.where(
            has_sk, np.linalg.norm(np.where(has_sk[:, None], sketch, 0.0), axis=1), np.nan
        )
        good_norm = has_sk.copy()
    norm_ratio = divergence.norm_ratio_to_median(norm_src, good_norm)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_norm = np.log(np.where(norm_src > 0, norm_src, np.nan))
    z_norm = divergence.robust_z(log_norm, good_norm)
    z_cos = divergence.robust_z(cos, has_sk)
    prev_sk = st.prev_sketch[idx].astype(np.float64)
    cos_prev = _nan(n)
    has_prev = (
        has_sk & np.isfinite(prev_sk).all(axis=1) if sketch.shape[1] else np.zeros(n, dtype=bool)
    )
    if has_prev.any():
        cos_prev[has_prev] = divergence.rowwise_cosine(sketch[has_prev], prev_sk[has_prev])
    stale = ok & divergence.stale_updates(
        cos_prev, norm_src, st.prev_norm[idx], th.stale_cosine_min, th.stale_norm_rtol
    )
    free = good_norm & divergence.free_riders(norm_ratio, norm_src, th.free_rider_norm_ratio)
    # a robust z says "unusual for this round"; when the round's spread is tiny
    # (IID clients) small differences are far out, so each side also needs a
    # material effect: a norm off by a factor, a cosine well below the round's
    div_score = divergence.divergence_score(
        z_norm,
        norm_ratio,
        z_cos,
        cos,
        has_sk,
        z_cap=th.update_robust_z,
        norm_min_ratio=th.update_norm_min_ratio,
        cosine_min_drop=th.update_cosine_min_drop,
    )
    div_round = (
        ok & ~free & ~stale & ~nonfinite & (np.nan_to_num(div_score, nan=0.0) > th.update_robust_z)
    )
    if calibrating:
        _collect(
            st.calibration_samples,
            "update_robust_z",
            div_score[healthy & ~free & ~stale],
            cal_limit["update_robust_z"],
        )
    if sketch.shape[1]:
        st.prev_sketch[idx[has_sk]] = sketch[has_sk].astype(np.float32)
    upd_norm = ok & np.isfinite(norm_src)
    st.prev_norm[idx[upd_norm]] = norm_src[upd_norm]
    scores["update_cosine"] = cos
    scores["update_cosine_robust_z"] = z_cos
    scores["update_cosine_previous"] = cos_prev
    scores["update_norm_ratio"] = norm_ratio
    scores["update_norm_robust_z"] = z_norm

    # -- participation / stragglers -------------------------------------------
    wall_z = participation.straggler_z(data.wall_time_seconds, ok)
    wall_ratio = participation.wall_time_ratio(data.wall_time_seconds, ok)
    straggler = (
        ok
        & (np.nan_to_num(wall_z, nan=0.0) > th.straggler_robust_z)
        & (np.nan_to_num(wall_ratio, nan=0.0) >= th.straggler_min_ratio)
    )
    if calibrating:
        _collect(
            st.calibration_samples,
            "straggler_robust_z",
            wall_z[healthy],
            cal_limit["straggler_robust_z"],
        )
    scores["wall_time_robust_z"] = wall_z
    scores["wall_time_ratio"] = wall_ratio
    scores["federation_benefit"] = fairness.federation_benefit(
        data.eval_accuracy, data.local_accuracy
    )

    # -- streaks (present clients) --------------------------------------------
    observed = ok
    flags = {
        "label_drift": label_flag,
        "feature_drift": feat_flag,
        "drift": label_flag | feat_flag,
        "performance_drift": perf_flag,
        "update_anomaly": div_round,
        "stale_update": stale,
        "free_rider": free,
        "nonfinite_update": nonfinite,
        "straggler": straggler,
    }
    obs_for = {
        "label_drift": ready,
        "feature_drift": feat_ready_any,
        "drift": ready | feat_ready_any,
        "performance_drift": np.isfinite(ph_stat),
        "nonfinite_update": np.ones(n, dtype=bool),
    }
    for name, flag in flags.items():
        s = st.streaks[name]
        s[idx] = divergence.update_streak(s[idx], flag, obs_for.get(name, observed))
    # dropouts: explicit non-ok statuses, plus absent known clients when everyone was expected
    expected_round = data.num_sampled if data.num_sampled is not None else cfg.expected_clients
    failed_k = np.zeros(st.num_clients, dtype=bool)
    ok_k = np.zeros(st.num_clients, dtype=bool)
    failed_k[idx[~ok]] = True
    ok_k[idx[ok]] = True
    absent_k = np.ones(st.num_clients, dtype=bool)
    absent_k[idx] = False
    count_absent = expected_round is not None and expected_round >= st.num_clients
    if count_absent:
        failed_k |= absent_k
    st.streaks["dropout"] = participation.dropout_streaks(st.streaks["dropout"], failed_k, ok_k)
    for name in STREAKS:
        scores[f"{name}_streak_rounds"] = st.streaks[name][idx].astype(np.float64)

    div_flag = st.streaks["update_anomaly"][idx] >= th.update_divergence_min_streak

    # -- anomaly score ---------------------------------------------------------
    anomaly = np.zeros(n)
    for part in (
        label_ratio,
        feat_ratio,
        ph_stat / th.changepoint_lambda,
        # np.minimum, not fmin: a missing score (too few clients, a failed client) must stay
        # missing (0 below), not become exactly the alarm line.
        np.where(div_round | div_flag, div_score, np.minimum(div_score, th.update_robust_z))
        / th.update_robust_z,
        np.where(stale | free, 1.0, 0.0),
        np.minimum(wall_z / th.straggler_robust_z, wall_ratio / th.straggler_min_ratio),
    ):
        anomaly = np.fmax(anomaly, np.nan_to_num(part, nan=0.0, neginf=0.0))
    anomaly = np.where(nonfinite, np.inf, np.maximum(anomaly, 0.0))
    scores["anomaly_score"] = anomaly

    # -- client-level active signals (loops over flagged clients only) --------
    since = lambda name, i: rnd - int(st.streaks[name][idx[i]]) + 1  # noqa: E731

    for i in np.flatnonzero(label_flag):
        cid = ids[i]
        r = st.ref_label_counts[idx[i]]
        top, dlt = drift.top_movers(r[None, :], lh[i][None, :], k=3)
        p_ref = r / r.sum()
        p_cur = lh[i] / lh[i].sum()
        c = int(top[0, 0])
        movers = [
            {
                "class": int(k),
                "name": cfg.class_name(int(k)),
                "reference_share": float(p_ref[k]),
                "share": float(p_cur[k]),
            }
            for k in top[0]
        ]
        ratio = float(label_ratio[i])
        active.append(
            ActiveSignal(
                kind="label_drift",
                severity=_severity(ratio, cf),
                client_id=cid,
                score=float(js_ref[i]),
                threshold=float(label_thr[i]),
                message=(
                    f"client {cid}: {cfg.class_name(c)} share {_pct(p_ref[c])} -> {_pct(p_cur[c])} "
                    f"since round {since('label_drift', i)}; JS {_f(js_ref[i])} vs reference; "
                    f"threshold {_f(label_thr[i])}"
                ),
                details={
                    "top_classes": movers,
                    "js_federation": _json_num(js_fed[i]),
                    "base_threshold": th.label_drift_js,
                    "noise_mechanism": data.noise_mechanism[i],
                    "noise_scale": _json_num(data.noise_scale[i]),
                    "streak_rounds": int(st.streaks["label_drift"][idx[i]]),
                },
            )
        )
    for i in np.flatnonzero(feat_flag):
        cid = ids[i]
        f = int(feat_top[i])
        fname = cfg.feature_names[f] if f < len(cfg.feature_names) else f"feature {f}"
        per = sorted(
            (
                {
                    "feature": cfg.feature_names[g] if g < len(cfg.feature_names) else str(g),
                    "psi": _json_num(per_feature["psi"][g][i]),
                    "wasserstein_std": _json_num(per_feature["w"][g][i]),
                    "ks": _json_num(per_feature["ks"][g][i]),
                }
                for g in range(nf)
            ),
            key=lambda d: -(d["psi"] or 0.0),
        )[:3]
        ratio = float(feat_ratio[i])
        active.append(
            ActiveSignal(
                kind="feature_drift",
                severity=_severity(ratio, cf),
                client_id=cid,
                score=ratio,
                threshold=1.0,
                message=(
                    f"client {cid}: feature '{fname}' moved most since round {since('feature_drift', i)}; "
                    f"PSI {_f(per_feature['psi'][f][i])}, Wasserstein {_f(per_feature['w'][f][i])} std, "
                    f"KS {_f(per_feature['ks'][f][i])}; {_f(ratio)}x its noise-adjusted threshold "
                    f"(PSI {th.feature_drift_psi}, W {th.feature_drift_wasserstein}, KS {th.feature_drift_ks})"
                ),
                details={
                    "top_features": per,
                    "streak_rounds": int(st.streaks["feature_drift"][idx[i]]),
                },
            )
        )
    for i in np.flatnonzero(label_flag & feat_flag):
        cid = ids[i]
        ratio = float(max(label_ratio[i], feat_ratio[i]))
        active.append(
            ActiveSignal(
                kind="data_drift",
                severity="critical",
                client_id=cid,
                score=ratio,
                threshold=1.0,
                message=(
                    f"client {cid}: labels and features both drifted from its reference rounds "
                    f"(JS {_f(js_ref[i])}, max PSI {_f(psi_max[i])}); {_f(ratio)}x threshold"
                ),
                details={
                    "label_ratio": float(label_ratio[i]),
                    "feature_ratio": float(feat_ratio[i]),
                },
            )
        )
    for i in np.flatnonzero(perf_flag):
        cid = ids[i]
        ratio = float(ph_stat[i] / th.changepoint_lambda)
        active.append(
            ActiveSignal(
                kind="performance_drift",
                severity=_severity(ratio, cf),
                client_id=cid,
                score=float(ph_stat[i]),
                threshold=th.changepoint_lambda,
                message=(
                    f"client {cid}: eval loss of the global model changed (Page-Hinkley "
                    f"{_f(ph_stat[i])} > {_f(th.changepoint_lambda)}); loss {_f(data.eval_loss[i], 3)} is "
                    f"{_f(math.exp(rel[i]))}x the round's median client"
                ),
                details={
                    "eval_loss": _json_num(data.eval_loss[i]),
                    "relative_log_loss": _json_num(rel[i]),
                },
            )
        )
    for i in np.flatnonzero(div_flag & div_round):
        cid = ids[i]
        k = int(st.streaks["update_anomaly"][idx[i]])
        active.append(
            ActiveSignal(
                kind="update_divergence",
                severity=_severity(float(div_score[i]) / th.update_robust_z, cf),
                client_id=cid,
                score=float(div_score[i]),
                threshold=th.update_robust_z,
                message=(
                    f"client {cid}: update diverges for {k} rounds; cosine to aggregate "
                    f"{_f(cos[i])} (robust z {_f(z_cos[i], 1)}), norm {_f(norm_ratio[i])}x median "
                    f"(robust z {_f(z_norm[i], 1)}); threshold |z| {_f(th.update_robust_z, 1)}"
                ),
                details={
                    "cosine": _json_num(cos[i]),
                    "cosine_robust_z": _json_num(z_cos[i]),
                    "norm_ratio": _json_num(norm_ratio[i]),
                    "norm_robust_z": _json_num(z_norm[i]),
                    "streak_rounds": k,
                },
            )
        )
    for i in np.flatnonzero(stale):
        cid = ids[i]
        active.append(
            ActiveSignal(
                kind="stale_update",
                severity="warning",
                client_id=cid,
                score=float(np.nan_to_num(cos_prev[i], nan=1.0)),
                threshold=th.stale_cosine_min,
                message=(
                    f"client {cid}: update repeats its previous one for "
                    f"{int(st.streaks['stale_update'][idx[i]])} rounds (cosine "
                    f"{_f(cos_prev[i], 5) if np.isfinite(cos_prev[i]) else 'n/a'}, same norm {_f(norm_src[i], 4)})"
                ),
                details={"cosine_previous": _json_num(cos_prev[i]), "norm": _json_num(norm_src[i])},
            )
        )
    for i in np.flatnonzero(free):
        cid = ids[i]
        active.append(
            ActiveSignal(
                kind="free_rider",
                severity="warning",
                client_id=cid,
                score=float(np.nan_to_num(norm_ratio[i], nan=0.0)),
                threshold=th.free_rider_norm_ratio,
                message=(
                    f"client {cid}: near-zero update (norm {norm_src[i]:.3g}, "
                    f"{_f(np.nan_to_num(norm_ratio[i], nan=0.0), 4)}x the round median) for "
                    f"{int(st.streaks['free_rider'][idx[i]])} rounds"
                ),
                details={"norm": _json_num(norm_src[i]), "norm_ratio": _json_num(norm_ratio[i])},
            )
        )
    for i in np.flatnonzero(nonfinite):
        cid = ids[i]
        what = [
            w
            for w, b in (
                ("update", bool(data.nonfinite_update[i] or np.isinf(norm[i]))),
                (
                    "sketch",
                    bool(sketch.shape[1] and divergence.nonfinite_rows(sketch[i : i + 1])[0]),
                ),
                ("loss", bool(data.nonfinite_loss[i])),
            )
            if b
        ]
        active.append(
            ActiveSignal(
                kind="nonfinite_update",
                severity="critical",
                client_id=cid,
                score=1.0,
                threshold=0.5,
                message=f"client {cid}: sent NaN/inf in its {' and '.join(what) or 'update'}",
                details={"fields": what},
            )
        )
    for i in np.flatnonzero(straggler):
        cid = ids[i]
        med = float(np.nanmedian(np.where(ok, data.wall_time_seconds, np.nan)))
        active.append(
            ActiveSignal(
                kind="straggler",
                severity="info",
                client_id=cid,
                score=float(wall_z[i]),
                threshold=th.straggler_robust_z,
                message=(
                    f"client {cid}: round took {data.wall_time_seconds[i]:.3g} s, {_f(wall_ratio[i], 1)}x "
                    f"the median {med:.3g} s (robust z {_f(wall_z[i], 1)}; thresholds z "
                    f"{_f(th.straggler_robust_z, 1)} and {_f(th.straggler_min_ratio, 1)}x)"
                ),
                details={
                    "wall_time_seconds": _json_num(data.wall_time_seconds[i]),
                    "median_seconds": _json_num(med),
                    "ratio_to_median": _json_num(wall_ratio[i]),
                },
            )
        )
    drop_k = np.flatnonzero(st.streaks["dropout"] >= th.dropout_streak_rounds)
    for k in drop_k:
        cid = str(st.client_ids[k])
        streak = int(st.streaks["dropout"][k])
        present = not absent_k[k]
        what = f"status {status[np.flatnonzero(idx == k)[0]]}" if present else "no report"
        active.append(
            ActiveSignal(
                kind="dropout",
                severity=_severity(streak / th.dropout_streak_rounds, cf),
                client_id=cid,
                score=float(streak),
                threshold=float(th.dropout_streak_rounds),
                message=(
                    f"client {cid}: missing from {streak} consecutive rounds ({what} in round {rnd}); "
                    f"last seen round {int(st.last_seen_round[k]) if not present else rnd}"
                ),
                details={"streak_rounds": streak, "reported": present},
            )
        )

    # -- round-level signals ---------------------------------------------------
    rs: dict[str, float] = {}
    counts = participation.status_counts(status)
    n_ok = counts["ok"]
    rs["reports"] = float(n)
    rs.update({f"reports_{k}": float(v) for k, v in counts.items()})
    rs["expected_clients"] = float(expected_round) if expected_round else math.nan
    part = participation.participation_ratio(n_ok, expected_round)
    rs["participation_ratio"] = part
    rs["reported_expected_ratio"] = participation.participation_ratio(n, expected_round)
    rs["clients_known"] = float(st.num_clients)
    rs["clients_absent_counted"] = float(absent_k.sum()) if count_absent else 0.0
    rs["stragglers"] = float(straggler.sum())
    rs["dropouts"] = float(drop_k.size)
    if math.isfinite(part) and part < th.participation_min_ratio:
        ratio = th.participation_min_ratio / max(part, 1e-9)
        active.append(
            ActiveSignal(
                kind="participation_drop",
                severity=_severity(ratio, cf),
                client_id=None,
                score=part,
                threshold=th.participation_min_ratio,
                message=(
                    f"round {rnd}: {n_ok} of {expected_round} expected clients reported ok "
                    f"({_pct(part)}; failed {counts['failed']}, dropped {counts['dropped']}, "
                    f"timeout {counts['timeout']}); threshold {_pct(th.participation_min_ratio)}"
                ),
                details={"reported_ok": n_ok, "expected": expected_round, **counts},
            )
        )

    # fairness
    acc = np.where(ok, data.eval_accuracy, np.nan)
    fs = fairness.fairness_summary(acc, floor=th.fairness_floor)
    rs.update(fs)
    benefit = scores["federation_benefit"][ok]
    benefit = benefit[np.isfinite(benefit)]
    rs["federation_benefit_mean"] = float(benefit.mean()) if benefit.size else math.nan
    rs["federation_benefit_negative_share"] = (
        float((benefit < 0).mean()) if benefit.size else math.nan
    )
    st.fairness_mean_history = np.append(st.fairness_mean_history, fs["accuracy_mean"])[
        -_HISTORY_CAP:
    ]
    st.fairness_worst_history = np.append(st.fairness_worst_history, fs["accuracy_worst10_mean"])[
        -_HISTORY_CAP:
    ]
    mean_ch, worst_ch = math.nan, math.nan
    w = th.fairness_window
    if w >= 2 and st.fairness_mean_history.size >= w:
        mean_ch, worst_ch = fairness.fairness_regression(
            st.fairness_mean_history[-w:], st.fairness_worst_history[-w:]
        )
    rs["fairness_mean_change"] = mean_ch
    rs["fairness_worst10_change"] = worst_ch
    if mean_ch > 0 and worst_ch < -th.fairness_worst_drop:
        drop = -worst_ch
        active.append(
            ActiveSignal(
                kind="fairness_regression",
                severity=_severity(drop / th.fairness_worst_drop, cf),
                client_id=None,
                score=drop,
                threshold=th.fairness_worst_drop,
                message=(
                    f"round {rnd}: mean accuracy {'+' if mean_ch >= 0 else ''}{_f(100 * mean_ch, 1)} pts "
                    f"over {w} rounds while the worst 10% fell {_f(100 * drop, 1)} pts "
                    f"(to {_pct(fs['accuracy_worst10_mean'])}); threshold {_f(100 * th.fairness_worst_drop, 1)} pts"
                ),
                details={"mean_change": mean_ch, "worst10_change": worst_ch, "window_rounds": w},
            )
        )

    # global health
    gl = data.global_eval_loss
    gl_f = math.nan if gl is None else float(gl)
    jump = health.loss_jump_ratio(gl_f, st.global_loss_history)
    st.global_loss_history = np.append(st.global_loss_history, gl_f)[-_HISTORY_CAP:]
    stag = health.stagnation(st.global_loss_history, th.stagnation_window)
    rs["global_eval_loss"] = gl_f
    rs["global_eval_accuracy"] = (
        math.nan if data.global_eval_accuracy is None else float(data.global_eval_accuracy)
    )
    rs["global_loss_jump_ratio"] = jump
    rs["global_stagnation_improvement"] = stag
    nonfinite_agg = health.nonfinite_aggregate(
        gl, data.aggregate_update_norm, data.aggregate_sketch
    )
    rs["nonfinite_aggregate"] = float(nonfinite_agg)
    if nonfinite_agg:
        active.append(
            ActiveSignal(
                kind="nonfinite_aggregate",
                severity="critical",
                client_id=None,
                score=1.0,
                threshold=0.5,
                message=(
                    f"round {rnd}: the aggregate holds NaN/inf (global loss {gl}, aggregate norm "
                    f"{data.aggregate_update_norm}); {int(nonfinite.sum())} clients sent non-finite updates"
                ),
                details={"clients_nonfinite": int(nonfinite.sum())},
            )
        )
    elif math.isfinite(jump) and jump > th.loss_jump_ratio:
        active.append(
            ActiveSignal(
                kind="global_divergence",
                severity=_severity(jump / th.loss_jump_ratio, cf),
                client_id=None,
                score=jump,
                threshold=th.loss_jump_ratio,
                message=(
                    f"round {rnd}: global eval loss {_f(gl_f, 3)} is {_f(jump)}x the median of the "
                    f"previous rounds; threshold {_f(th.loss_jump_ratio)}x"
                ),
                details={"global_eval_loss": gl_f},
            )
        )
    if math.isfinite(stag) and stag < th.stagnation_min_improvement:
        active.append(
            ActiveSignal(
                kind="global_stagnation",
                severity="warning",
                client_id=None,
                score=stag,
                threshold=th.stagnation_min_improvement,
                message=(
                    f"round {rnd}: best global loss improved {_f(100 * stag, 2)}% over the last "
                    f"{th.stagnation_window} rounds; threshold {_f(100 * th.stagnation_min_improvement, 2)}%"
                ),
                details={"window_rounds": th.stagnation_window},
            )
        )
    gap = health.centralized_gap(cfg.centralized_accuracy, data.global_eval_accuracy)
    rs["centralized_gap"] = gap
    if (
        math.isfinite(gap)
        and gap > th.centralized_gap_max
        and st.rounds_seen + 1 >= th.centralized_gap_min_rounds
    ):
        active.append(
            ActiveSignal(
                kind="centralized_gap",
                severity="info",
                client_id=None,
                score=gap,
                threshold=th.centralized_gap_max,
                message=(
                    f"round {rnd}: global accuracy {_pct(data.global_eval_accuracy)} is "
                    f"{_f(100 * gap, 1)} pts below the centralized baseline {_pct(cfg.centralized_accuracy)}; "
                    f"threshold {_f(100 * th.centralized_gap_max, 1)} pts"
                ),
                details={"centralized_accuracy": cfg.centralized_accuracy},
            )
        )

    # privacy
    eps_acct = math.nan
    if cfg.dp_noise_multiplier is not None and cfg.dp_sample_rate is not None:
        # One accountant step per round number, not per analysed round: a round that was never
        # analysed (closed late, never closed) still spent privacy. Errs towards a higher epsilon.
        st.dp_steps = max(st.dp_steps + 1, rnd)
        eps_acct = privacy.dp_fedavg_epsilon(
            cfg.dp_noise_multiplier, cfg.dp_sample_rate, st.dp_steps, cfg.dp_delta or 1e-5
        )
    eps = float(data.epsilon) if data.epsilon is not None else eps_acct
    share = privacy.budget_share(eps, cfg.dp_target_epsilon) if math.isfinite(eps) else math.nan
    rs["epsilon_accountant"] = eps_acct
    rs["epsilon_reported"] = math.nan if data.epsilon is None else float(data.epsilon)
    rs["epsilon_spent"] = eps
    rs["privacy_budget_share"] = share
    if math.isfinite(share) and share >= th.privacy_budget_warn_share:
        active.append(
            ActiveSignal(
                kind="privacy_budget",
                severity="critical" if share >= 1.0 else "warning",
                client_id=None,
                score=share,
                threshold=th.privacy_budget_warn_share,
                message=(
                    f"round {rnd}: epsilon {_f(eps)} spent of target {_f(cfg.dp_target_epsilon)} "
                    f"({_pct(share)}, delta {cfg.dp_delta}); warning at {_pct(th.privacy_budget_warn_share)}"
                ),
                details={
                    "epsilon": eps,
                    "target_epsilon": cfg.dp_target_epsilon,
                    "source": "reported" if data.epsilon is not None else "opacus_rdp",
                },
            )
        )

    # summary counts
    rs["clients_label_drift"] = float(label_flag.sum())
    rs["clients_feature_drift"] = float(feat_flag.sum())
    rs["clients_performance_drift"] = float(perf_flag.sum())
    rs["clients_update_divergence"] = float((div_flag & div_round).sum())
    rs["clients_stale_update"] = float(stale.sum())
    rs["clients_free_rider"] = float(free.sum())
    rs["clients_nonfinite_update"] = float(nonfinite.sum())
    rs["clients_flagged"] = float(len({a.client_id for a in active if a.client_id is not None}))
    rs["anomaly_score_max"] = float(anomaly.max()) if n else math.nan

    # -- calibration -----------------------------------------------------------
    st.rounds_seen += 1
    st.last_round = rnd
    rs["calibrating"] = float(calibrating)
    if calibrating and st.rounds_seen >= th.calibration_rounds:
        q = 1.0 - th.calibration_false_alarm_rate
        cal: dict[str, float] = {}
        for name in CALIBRATED_THRESHOLDS:
            sample = st.calibration_samples.get(name)
            if sample is None or sample.size < 20:
                continue
            floor = th.calibration_min_fraction * getattr(base_th, name)
            cal[name] = float(max(np.quantile(sample, q), floor))
        st.calibrated = cal
        st.calibration_samples = {}
    for name, value in st.calibrated.items():
        rs[f"calibrated_{name}"] = value

    active.sort(key=lambda a: (SEVERITIES.index(a.severity) * -1, a.kind, a.client_id or ""))
    return RoundAnalysis(
        round=rnd,
        state=st,
        client_ids=ids,
        client_scores=scores,
        round_scores=rs,
        active=active,
        thresholds=th,
    )
