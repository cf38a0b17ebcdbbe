"""The learning task: scikit-learn digits split over Dirichlet non-IID clients, a small MLP.

Data and partitions come from fedsentinel's simulator (``simulator.data``,
``simulator.partition``) so a client's rows are the same in every process.
:class:`DigitsConfig` also names the fault to inject on one client:

* ``label-flip``: from ``fault_round`` the client's labels y become 9 - y;
* ``label-drift``: from ``fault_round`` the client's data is replaced by as many
  rows of classes 0 and 1 (a new data source with another label mix);
* ``nan``: from ``fault_round`` the client returns a non-finite update;
* ``crash_client``: that client raises in ``crash_round`` (a failed reply).
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import nn

FAULTS = ("none", "label-flip", "label-drift", "nan")


@dataclass(frozen=True)
class DigitsConfig:
    num_clients: int = 5
    rounds: int = 4
    alpha: float = 0.5
    seed: int = 0
    local_epochs: int = 2
    batch_size: int = 32
    lr: float = 0.3
    test_fraction: float = 0.2
    fault: str = "none"
    fault_client: int = 0
    fault_round: int = 3
    crash_client: int = -1
    crash_round: int = 2

    def __post_init__(self) -> None:
        if self.fault not in FAULTS:
            raise ValueError(f"unknown fault {self.fault!r}; expected one of {', '.join(FAULTS)}")

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> DigitsConfig:
        """From Flower's run config (``[tool.flwr.app.config]``, keys with dashes)."""
        known = {f.name: f.type for f in fields(cls)}
        values = {}
        for key, value in run_config.items():
            name = key.replace("-", "_")
            if name in known:
                values[name] = value
        return cls(**values)

    def to_run_config(self) -> dict[str, Any]:
        return {k.replace("_", "-"): v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class ClientData:
    X_train: np.ndarray
    y_train: np.ndarray
    X_heldout: np.ndarray
    y_heldout: np.ndarray


@functools.lru_cache(maxsize=4)
def _federation(num_clients: int, alpha: float, seed: int, test_fraction: float):  # type: ignore[no-untyped-def]
    from simulator.data import load_digits_dataset
    from simulator.partition import dirichlet_partition, split_held_out

    dataset = load_digits_dataset()
    rng = np.random.default_rng(seed)
    partition = dirichlet_partition(dataset.y, num_clients, alpha, rng)
    splits = [split_held_out(ix, test_fraction, rng) for ix in partition.indices]
    return dataset, splits


def reference_features(cfg: DigitsConfig) -> np.ndarray:
    """The pooled training features (for the run's shared histogram edges)."""
    dataset, splits = _federation(cfg.num_clients, cfg.alpha, cfg.seed, cfg.test_fraction)
    return dataset.X[np.concatenate([train for train, _ in splits])]


def client_data(cfg: DigitsConfig, partition_id: int, server_round: int) -> ClientData:
    """Client ``partition_id``'s data in ``server_round``, with the configured fault applied."""
    dataset, splits = _federation(cfg.num_clients, cfg.alpha, cfg.seed, cfg.test_fraction)
    train, held = splits[partition_id]
    X, y = dataset.X[train], dataset.y[train]
    Xh, yh = dataset.X[held], dataset.y[held]
    if partition_id == cfg.fault_client and server_round >= cfg.fault_round:
        if cfg.fault == "label-flip":
            y, yh = 9 - y, 9 - yh
        elif cfg.fault == "label-drift":
            rng = np.random.default_rng(cfg.seed + 1)
            pool = np.flatnonzero(dataset.y <= 1)
            rows = rng.choice(pool, size=len(y) + len(yh), replace=len(pool) < len(y) + len(yh))
            X, y = dataset.X[rows[: len(y)]], dataset.y[rows[: len(y)]]
            Xh, yh = dataset.X[rows[len(y) :]], dataset.y[rows[len(y) :]]
    return ClientData(X, y, Xh, yh)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def initial_model(seed: int) -> Net:
    torch.manual_seed(seed)
    return Net()


def train_model(
    model: Net, X: np.ndarray, y: np.ndarray, cfg: DigitsConfig, seed: int
) -> tuple[float, float]:
    """Local SGD; returns the mean training loss and accuracy of the last epoch."""
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(seed)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    total = correct = 0
    loss_sum = 0.0
    for _ in range(cfg.local_epochs):
        total = correct = 0
        loss_sum = 0.0
        perm = torch.randperm(len(yt), generator=gen)
        for start in range(0, len(yt), cfg.batch_size):
            idx = perm[start : start + cfg.batch_size]
            opt.zero_grad()
            out = model(Xt[idx])
            loss = loss_fn(out, yt[idx])
            loss.backward()
            opt.step()
            loss_sum += float(loss) * len(idx)
            correct += int((out.argmax(1) == yt[idx]).sum())
            total += len(idx)
    return loss_sum / max(total, 1), correct / max(total, 1)


@torch.no_grad()
def evaluate_model(model: Net, X: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    torch.set_num_threads(1)
    model.eval()
    out = model(torch.from_numpy(X))
    yt = torch.from_numpy(y)
    loss = float(nn.functional.cross_entropy(out, yt))
    return loss, float((out.argmax(1) == yt).float().mean())
