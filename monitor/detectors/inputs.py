"""What the detectors read: the run's configuration and one closed round as arrays.

:class:`RoundInput` is built from wire-format reports (:meth:`RoundInput.from_reports`)
or directly by the store (:mod:`monitor.store.round_input`); every per-client
array is aligned with ``client_ids`` and NaN where nothing was reported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from monitor.schemas import ClientReport, RoundClose, RunCreate

__all__ = ["EVIDENCE_MAX_ABS", "RunConfig", "RoundInput", "overflow_as_infinite"]

EVIDENCE_MAX_ABS = 1e150
"""A loss, update norm or sketch value beyond this is treated as infinite. Such values are fault
evidence the schema accepts as sent (an exploding update), but their squares (norms, variances)
and a round's sums of them overflow float64: a constant update of 1e308 would otherwise make every
cosine NaN and pass as a "stale" update. Treated as infinite, it is a ``nonfinite_update``."""


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
    telemetry_epsilon: float | None = None
    """The run's declared telemetry budget per client (``RunCreate.telemetry_budget``)."""
    telemetry_delta: float | None = None
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
            telemetry_epsilon=run.telemetry_budget.epsilon if run.telemetry_budget else None,
            telemetry_delta=run.telemetry_budget.delta if run.telemetry_budget else None,
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
    eval_examples: np.ndarray
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
    update_cosine_previous_global: np.ndarray | None = None
    """Secure aggregation: each client's cosine of its update to the previous global update
    (NaN = not sent); None = nobody sent one."""
    update_repeated: np.ndarray | None = None
    """Secure aggregation: 1 where the client flagged its update as a repeat, 0, NaN = not sent."""

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
            eval_examples=_nan(n),
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
            update_cosine_previous_global=_nan(n),
            update_repeated=_nan(n),
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
            d.eval_examples[i] = num(r.eval_examples)
            d.wall_time_seconds[i] = num(r.wall_time_seconds)
            d.update_norm[i] = num(r.update_norm)
            d.clipped[i] = np.nan if r.clipped is None else float(r.clipped)
            d.update_cosine_previous_global[i] = num(r.update_cosine_previous_global)
            d.update_repeated[i] = np.nan if r.update_repeated is None else float(r.update_repeated)
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
            "eval_examples",
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


def _huge(values: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.isfinite(values) & (np.abs(values) > EVIDENCE_MAX_ABS)


def _as_inf(values: np.ndarray, huge: np.ndarray) -> np.ndarray:
    return np.where(huge, np.copysign(np.inf, values), values)


def _scalar_as_inf(value: float | None) -> float | None:
    if value is None or not math.isfinite(value) or abs(value) <= EVIDENCE_MAX_ABS:
        return value
    return math.copysign(math.inf, value)


def overflow_as_infinite(data: RoundInput) -> RoundInput:
    """A copy of ``data`` with evidence beyond :data:`EVIDENCE_MAX_ABS` made infinite and flagged
    (``nonfinite_update``/``nonfinite_loss``), so no statistic overflows on it and the fault is
    reported as the non-finite update it is."""
    loss = _huge(data.train_loss) | _huge(data.eval_loss)
    norm = _huge(data.update_norm)
    sketch = _huge(data.sketch)
    agg = data.aggregate_sketch
    agg_huge = _huge(agg) if agg is not None else np.zeros(0, dtype=bool)
    scalars = (data.global_eval_loss, data.aggregate_update_norm)
    if not (loss.any() or norm.any() or sketch.any() or agg_huge.any()) and all(
        _scalar_as_inf(v) == v for v in scalars
    ):
        return data
    return replace(
        data,
        train_loss=_as_inf(data.train_loss, _huge(data.train_loss)),
        eval_loss=_as_inf(data.eval_loss, _huge(data.eval_loss)),
        update_norm=_as_inf(data.update_norm, norm),
        sketch=_as_inf(data.sketch, sketch),
        nonfinite_loss=data.nonfinite_loss | loss,
        nonfinite_update=data.nonfinite_update | norm | sketch.any(axis=1),
        global_eval_loss=_scalar_as_inf(data.global_eval_loss),
        aggregate_update_norm=_scalar_as_inf(data.aggregate_update_norm),
        aggregate_sketch=None if agg is None else _as_inf(agg, agg_huge),
    )
