"""Valid request bodies for tests, small and deterministic."""

from __future__ import annotations

from typing import Any

NUM_CLASSES = 4
FEATURES = ["age", "income"]
EDGES = [[0.0, 1.0, 2.0, 3.0], [0.0, 10.0, 20.0]]
SKETCH_DIM = 3


def run_spec(run_id: str = "run-1", **overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "run_id": run_id,
        "name": "test run",
        "task": {"num_classes": NUM_CLASSES, "feature_names": FEATURES},
        "feature_bin_edges": EDGES,
        "sketch_dim": SKETCH_DIM,
        "sketch_seed": 7,
        "expected_clients": 3,
        "centralized_accuracy": 0.9,
    }
    spec.update(overrides)
    return spec


def report(client_id: str = "c1", seed: int = 0, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "client_id": client_id,
        "status": "ok",
        "num_examples": 100 + seed,
        "train_loss": 0.5 + seed / 100,
        "train_accuracy": 0.8,
        "eval_loss": 0.6,
        "eval_accuracy": 0.75,
        "wall_time_seconds": 1.5,
        "update_norm": 0.3 + seed / 10,
        "update_sketch": [0.1 * seed, -0.2, 0.3],
        "label_histogram": [10.0, 20.0, 30.0, 40.0 + seed],
        "feature_histograms": [[5.0, 5.0, 5.0], [1.0, 2.0]],
        "clipped": False,
    }
    body.update(overrides)
    return body


def close_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "global_eval_loss": 0.55,
        "global_eval_accuracy": 0.77,
        "aggregate_update_norm": 0.2,
        "aggregate_sketch": [0.05, -0.1, 0.2],
        "num_sampled": 3,
    }
    body.update(overrides)
    return body
