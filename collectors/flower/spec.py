"""``run_spec``: a run registration built from reference data, with the simulator's bin edges."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from collectors.stats import feature_bin_edges
from monitor.schemas import RunCreate, TaskSpec


def run_spec(
    run_id: str,
    X_reference: np.ndarray | None,
    *,
    num_classes: int,
    expected_clients: int,
    bins: int = 10,
    feature_names: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    sketch_dim: int = 64,
    sketch_seed: int = 0,
    **extra: Any,
) -> RunCreate:
    """A ``RunCreate`` whose feature bin edges are the quantiles of ``X_reference``.

    Edges come from :func:`collectors.stats.feature_bin_edges` (the simulator's
    convention too); pass ``X_reference=None`` for no feature histograms. ``extra``
    goes to ``RunCreate`` as is (``name``, ``thresholds``, ``dp``, ``metadata``...).
    """
    edges: list[list[float]] = []
    names: list[str] = []
    if X_reference is not None:
        X = np.asarray(X_reference, dtype=np.float64)
        edges = [e.tolist() for e in feature_bin_edges(X, bins)]
        names = (
            list(feature_names)
            if feature_names is not None
            else [f"x{i}" for i in range(X.shape[1])]
        )
    task = TaskSpec(
        num_classes=num_classes,
        class_names=list(class_names) if class_names is not None else None,
        feature_names=names,
    )
    return RunCreate(
        run_id=run_id,
        task=task,
        feature_bin_edges=edges,
        sketch_dim=sketch_dim,
        sketch_seed=sketch_seed,
        expected_clients=expected_clients,
        **extra,
    )
