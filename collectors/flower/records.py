"""What travels inside Flower messages between :class:`MonitoredStrategy` and :func:`monitor_mod`.

Both directions use a ``ConfigRecord`` stored under :data:`RECORD_KEY` in the
message's ``RecordDict``:

* server -> client (train instructions): the run's task as the client needs it,
  ``num_classes``, the shared feature bin edges (flattened, with their lengths),
  the round number, ``client_scalars`` (secure aggregation: the client
  computes the update scalars) and the run's telemetry budget
  (``telemetry_*``, for clients whose mod follows the run's budget);
* client -> server (train replies): the client's statistics (label histogram,
  feature histograms, update norm, evaluation of the received global model on
  local held-out data, wall time, client id; the ``noise_*`` declaration of
  noised histograms; under secure aggregation the update's cosine to the
  previous global update and its repeat flag);
* server -> client (evaluate instructions): ``run_id`` and ``round`` only;
* client -> server (evaluate replies): the client id only.

Why a ``ConfigRecord`` and not the reply's ``MetricRecord``: Flower's built-in
strategies require exactly one ``MetricRecord`` per reply with the same keys in
every reply, and average every key by ``num-examples``. A separate
``ConfigRecord`` is ignored by them, so a reply carrying statistics aggregates
exactly like one without (even if the server side is not wrapped), and the
wrapper removes it before delegating anyway.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

RECORD_KEY = "fedsentinel"

STAT_FIELDS = (
    "num_examples",
    "train_loss",
    "train_accuracy",
    "eval_loss",
    "eval_accuracy",
    "eval_examples",
    "wall_time_seconds",
    "update_norm",
    "update_cosine_previous_global",
    "update_repeated",
)

NOISE_FIELDS = (
    "mechanism",
    "scale",
    "l2_sensitivity",
    "epsilon",
    "delta",
    "releases_planned",
    "release",
)
"""``histogram_noise`` keys, sent flat as ``noise_<key>`` (a ConfigRecord holds no nested dicts)."""


def encode_edges(edges: Sequence[Sequence[float]]) -> tuple[list[float], list[int]]:
    """Flatten per-feature edges into one list plus their lengths (ConfigRecord holds flat lists)."""
    flat = [float(x) for e in edges for x in e]
    return flat, [len(e) for e in edges]


def decode_edges(flat: Sequence[float], lengths: Sequence[int]) -> list[np.ndarray]:
    out, start = [], 0
    for n in lengths:
        out.append(np.asarray(flat[start : start + n], dtype=np.float64))
        start += n
    return out


def server_config(run: Any, server_round: int) -> dict[str, Any]:
    """The ConfigRecord content a train instruction carries (``run`` is a ``RunCreate``)."""
    flat, lengths = encode_edges(run.feature_bin_edges)
    out = {
        "run_id": run.run_id,
        "round": int(server_round),
        "num_classes": int(run.task.num_classes),
        "edges": flat,
        "edge_lengths": lengths,
        "client_scalars": bool(run.secure_aggregation),
    }
    budget = run.telemetry_budget
    planned = None if budget is None else (budget.planned_rounds or run.planned_rounds)
    if budget is not None and planned is not None:
        out["telemetry_epsilon"] = float(budget.epsilon)
        out["telemetry_delta"] = float(budget.delta)
        out["telemetry_planned_rounds"] = int(planned)
        out["telemetry_every_k_rounds"] = int(budget.every_k_rounds)
    return out


def flatten_arrays(arrays: Any, keys: Sequence[str] | None = None) -> np.ndarray | None:
    """All arrays of an ``ArrayRecord`` as one float64 vector, in ``keys`` order.

    ``keys`` defaults to the record's own order; pass the global model's keys so a
    reply is flattened in the same order. ``None`` when a key is missing or an
    array is not numeric (nothing to compare).
    """
    keys = list(arrays.keys()) if keys is None else list(keys)
    parts = []
    for key in keys:
        if key not in arrays:
            return None
        a = arrays[key].numpy()
        if not np.issubdtype(a.dtype, np.number):
            return None
        parts.append(np.asarray(a, dtype=np.float64).ravel())
    return np.concatenate(parts) if parts else np.zeros(0)


def finite_ratio(x: Any) -> float | None:
    """``x`` as a float in [0, 1], or ``None`` (the wire format refuses anything else)."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and 0.0 <= v <= 1.0 else None


def as_float(x: Any) -> float | None:
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def first_record(records: Any) -> Any:
    """The first record of a RecordDict-style mapping (apps send one of each kind), or None."""
    return next(iter(records.values()), None) if records else None


def first_number(metrics: Any, keys: tuple[str, ...]) -> float | None:
    """The first of ``keys`` present in a MetricRecord as a plain number (bools excluded)."""
    if metrics is None:
        return None
    for key in keys:
        value = metrics.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None
