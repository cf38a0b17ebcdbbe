"""How a pooled dataset is split into clients, and each client's held-out split.

The partitions of the FL literature (Hsu et al. 2019; Li et al. 2022, "Federated
Learning on Non-IID Data Silos: An Experimental Study"):

* ``iid``: a random permutation cut into near-equal parts.
* ``dirichlet`` (label skew): for every class c, proportions p_c ~ Dir(alpha 1_K)
  over the K clients; class c's rows are cut in those proportions. Small alpha
  gives one- or two-class clients, large alpha approaches IID.
* ``quantity`` (quantity skew): client sizes proportional to q ~ Dir(alpha 1_K),
  labels IID.
* ``feature`` (feature skew): IID rows, and each client k sees its features
  through its own affine map ``x' = a_k * x + s_k * sd`` with
  ``log a_k ~ N(0, strength/2)`` and ``s_k ~ N(0, strength)`` per feature
  (``sd`` the pooled per-feature standard deviation).
* ``natural``: the dataset's own clients (Synthetic's users).

Pure functions: randomness comes in as a ``numpy.random.Generator``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator.data import Dataset

PARTITIONS = ("iid", "dirichlet", "quantity", "feature", "natural")


@dataclass(frozen=True)
class Partition:
    """Row indices per client, plus the per-client affine feature map (feature skew only)."""

    indices: list[np.ndarray]
    scale: np.ndarray | None = None  # [K, d]
    shift: np.ndarray | None = None  # [K, d], already in feature units

    @property
    def num_clients(self) -> int:
        return len(self.indices)

    def sizes(self) -> np.ndarray:
        return np.array([len(ix) for ix in self.indices], dtype=np.int64)


def _check(n: int, num_clients: int, min_size: int) -> None:
    if num_clients < 1:
        raise ValueError("num_clients must be >= 1")
    if n < num_clients * min_size:
        raise ValueError(
            f"{n} examples cannot give {num_clients} clients at least {min_size} examples each"
        )


def iid_partition(n: int, num_clients: int, rng: np.random.Generator) -> Partition:
    _check(n, num_clients, 1)
    return Partition([np.sort(p) for p in np.array_split(rng.permutation(n), num_clients)])


def _top_up(parts: list[list[int]], min_size: int, rng: np.random.Generator) -> None:
    """Move random rows from the largest clients to clients below ``min_size`` (in place)."""
    for k in range(len(parts)):
        while len(parts[k]) < min_size:
            donor = max(range(len(parts)), key=lambda j: len(parts[j]))
            parts[k].append(parts[donor].pop(int(rng.integers(len(parts[donor])))))


def dirichlet_partition(
    y: np.ndarray,
    num_clients: int,
    alpha: float,
    rng: np.random.Generator,
    *,
    min_size: int = 2,
    max_tries: int = 100,
) -> Partition:
    """Label skew: class c's rows go to clients in proportions ``p_c ~ Dir(alpha)``.

    Redraws (up to ``max_tries``) until every client holds ``min_size`` rows, as in
    Hsu et al.; if that fails (many clients, few rows) the smallest clients are
    topped up from the largest.
    """
    if alpha <= 0:
        raise ValueError("dirichlet alpha must be > 0")
    _check(len(y), num_clients, min_size)
    classes = np.unique(y)
    parts: list[list[int]] = []
    for _ in range(max_tries):
        parts = [[] for _ in range(num_clients)]
        for c in classes:
            rows = rng.permutation(np.flatnonzero(y == c))
            p = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(p)[:-1] * len(rows)).astype(int)
            for k, chunk in enumerate(np.split(rows, cuts)):
                parts[k].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            break
    else:
        _top_up(parts, min_size, rng)
    return Partition([np.sort(np.array(p, dtype=np.int64)) for p in parts])


def quantity_skew_partition(
    n: int, num_clients: int, alpha: float, rng: np.random.Generator, *, min_size: int = 2
) -> Partition:
    """Quantity skew: sizes ``n_k ~ min_size + (n - K min_size) q_k``, ``q ~ Dir(alpha)``."""
    if alpha <= 0:
        raise ValueError("quantity alpha must be > 0")
    _check(n, num_clients, min_size)
    q = rng.dirichlet(np.full(num_clients, alpha))
    spare = n - num_clients * min_size
    sizes = min_size + np.floor(q * spare).astype(np.int64)
    sizes[np.argmax(q)] += n - sizes.sum()
    perm = rng.permutation(n)
    return Partition([np.sort(p) for p in np.split(perm, np.cumsum(sizes)[:-1])])


def feature_skew_partition(
    X: np.ndarray, num_clients: int, strength: float, rng: np.random.Generator
) -> Partition:
    """IID rows; client k's features become ``a_k * x + s_k * sd`` (see module docstring)."""
    if strength < 0:
        raise ValueError("feature skew strength must be >= 0")
    base = iid_partition(len(X), num_clients, rng)
    d = X.shape[1]
    sd = X.std(axis=0)
    scale = np.exp(rng.normal(0.0, strength / 2, (num_clients, d))).astype(np.float32)
    shift = (rng.normal(0.0, strength, (num_clients, d)) * sd).astype(np.float32)
    return Partition(base.indices, scale=scale, shift=shift)


def natural_partition(dataset: Dataset, num_clients: int) -> Partition:
    if dataset.natural_clients is None:
        raise ValueError(f"dataset {dataset.name!r} has no natural split; choose another partition")
    if len(dataset.natural_clients) != num_clients:
        raise ValueError(
            f"dataset {dataset.name!r} was generated for {len(dataset.natural_clients)} clients, not {num_clients}"
        )
    return Partition([np.asarray(ix, dtype=np.int64) for ix in dataset.natural_clients])


def make_partition(
    kind: str,
    dataset: Dataset,
    num_clients: int,
    rng: np.random.Generator,
    *,
    alpha: float = 0.5,
    feature_strength: float = 0.5,
) -> Partition:
    """Dispatch on the partition name (one of :data:`PARTITIONS`)."""
    n = len(dataset.y)
    if kind == "iid":
        return iid_partition(n, num_clients, rng)
    if kind == "dirichlet":
        return dirichlet_partition(dataset.y, num_clients, alpha, rng)
    if kind == "quantity":
        return quantity_skew_partition(n, num_clients, alpha, rng)
    if kind == "feature":
        return feature_skew_partition(dataset.X, num_clients, feature_strength, rng)
    if kind == "natural":
        return natural_partition(dataset, num_clients)
    raise ValueError(f"unknown partition {kind!r}; expected one of {', '.join(PARTITIONS)}")


def split_held_out(
    indices: np.ndarray, test_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A client's local train / held-out split.

    The held-out part has ``max(1, round(test_fraction * n))`` rows when the client
    has at least two, none otherwise: every client keeps at least one training row.
    """
    n = len(indices)
    n_test = 0 if n < 2 or test_fraction <= 0 else min(n - 1, max(1, round(test_fraction * n)))
    perm = rng.permutation(indices)
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def label_proportions(y: np.ndarray, partition: Partition, num_classes: int) -> np.ndarray:
    """``[K, C]`` share of each class among each client's rows."""
    counts = np.stack([np.bincount(y[ix], minlength=num_classes) for ix in partition.indices])
    return counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
