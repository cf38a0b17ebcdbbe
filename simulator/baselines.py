"""What federation is measured against.

* Centralized: the same model, from the same initial weights, trained with the
  same SGD recipe on the pooled training data of all clients for
  ``max(1, round(rounds * local_epochs * sample_fraction))`` epochs (the
  expected number of passes FedAvg makes over each example), evaluated on the
  pooled held-out data. ``RunCreate.centralized_accuracy`` reports it, and the
  final gap is ``centralized - federated``.
* Local-only: each client trains its own model on its own data for
  ``rounds * local_epochs`` epochs and evaluates on its own held-out data
  (``ClientReport.local_accuracy``): the benefit of federation per client is
  ``eval_accuracy - local_accuracy``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from simulator.models import Params
from simulator.train import (
    evaluate_groups,
    evaluate_stacked,
    make_schedule,
    train_batched,
    train_sequential,
)


@dataclass(frozen=True)
class CentralizedResult:
    accuracy: float
    loss: float
    epochs: int


def centralized_epochs(rounds: int, local_epochs: int, sample_fraction: float) -> int:
    return max(1, round(rounds * local_epochs * sample_fraction))


def train_centralized(
    model: nn.Module,
    init: Params,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    rng: np.random.Generator,
) -> CentralizedResult:
    """Pooled SGD (one "client" holding everything, sequential path)."""
    X = torch.from_numpy(np.ascontiguousarray(x_train, dtype=np.float32))
    Y = torch.from_numpy(np.ascontiguousarray(y_train, dtype=np.int64))
    schedule = make_schedule(
        np.array([len(y_train)]), epochs, batch_size, rng.random((epochs, len(y_train)))
    )
    trained = train_sequential(model, init, X, Y, schedule, lr=lr)
    params = {n: p[0] for n, p in trained.params.items()}
    Xt = torch.from_numpy(np.ascontiguousarray(x_test, dtype=np.float32))
    Yt = torch.from_numpy(np.ascontiguousarray(y_test, dtype=np.int64))
    loss, hits, count = evaluate_groups(
        model, params, Xt, Yt, torch.zeros(len(Yt), dtype=torch.int64), 1
    )
    n = max(float(count[0]), 1.0)
    return CentralizedResult(accuracy=float(hits[0]) / n, loss=float(loss[0]) / n, epochs=epochs)


def train_local_baselines(
    model: nn.Module,
    init: Params,
    x_train: list[np.ndarray],
    y_train: list[np.ndarray],
    x_test: list[np.ndarray],
    y_test: list[np.ndarray],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Every client's local-only accuracy (NaN where a client has no held-out rows), batched."""
    sizes = np.array([len(y) for y in y_train])
    X = torch.from_numpy(np.concatenate(x_train).astype(np.float32))
    Y = torch.from_numpy(np.concatenate(y_train).astype(np.int64))
    schedule = make_schedule(sizes, epochs, batch_size, rng.random((epochs, int(sizes.sum()))))
    trained = train_batched(model, init, X, Y, schedule, lr=lr)
    test_sizes = [len(y) for y in y_test]
    Xt = torch.from_numpy(np.concatenate(x_test).astype(np.float32))
    Yt = torch.from_numpy(np.concatenate(y_test).astype(np.int64))
    offsets = np.concatenate([[0], np.cumsum(test_sizes)[:-1]])
    rows = [np.arange(o, o + n) for o, n in zip(offsets, test_sizes, strict=True)]
    _, acc = evaluate_stacked(model, trained.params, Xt, Yt, rows)
    out = acc.numpy().astype(np.float64)
    out[np.array(test_sizes) == 0] = np.nan
    return out
