"""Datasets the simulator trains on: all real or generated locally, none downloaded.

* ``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images, 64
  pixel features scaled to [0, 1], 10 classes).
* ``breast_cancer`` / ``wine``: scikit-learn's bundled tabular sets, features
  standardised (z-scores over the whole set).
* ``synthetic``: the Synthetic(alpha, beta) generator of FedProx (Li et al.,
  2020, "Federated Optimization in Heterogeneous Networks", section 5.1),
  which comes with its own natural split into clients.

Everything here is pure: randomness comes in as a ``numpy.random.Generator``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

DATASETS = ("digits", "synthetic", "breast_cancer", "wine")

SYNTHETIC_FEATURES = 60
SYNTHETIC_CLASSES = 10


@dataclass(frozen=True)
class Dataset:
    """A labelled dataset, optionally with its natural split into clients.

    ``X`` is float32 ``[n, d]``, ``y`` int64 ``[n]`` in ``0..num_classes-1``.
    ``natural_clients`` lists, per client, the row indices that client owns
    (only for datasets that are federated by construction).
    """

    name: str
    X: np.ndarray
    y: np.ndarray
    num_classes: int
    feature_names: list[str]
    class_names: list[str] | None = None
    natural_clients: list[np.ndarray] | None = None

    @property
    def num_features(self) -> int:
        return int(self.X.shape[1])


@dataclass(frozen=True)
class SyntheticTruth:
    """The latent parameters Synthetic(alpha, beta) drew, kept so tests can check the recipe."""

    sizes: np.ndarray  # [K] examples per client
    u: np.ndarray  # [K] mean of W_k and b_k entries
    B: np.ndarray  # [K] mean of v_k entries
    v: np.ndarray  # [K, 60] feature means
    W: np.ndarray  # [K, 60, 10]
    b: np.ndarray  # [K, 10]
    feature_variance: np.ndarray = field(
        default_factory=lambda: np.arange(1, SYNTHETIC_FEATURES + 1, dtype=np.float64) ** -1.2
    )


def load_digits_dataset() -> Dataset:
    """8x8 digits; pixel intensities 0..16 divided by 16."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    X = (bunch.data / 16.0).astype(np.float32)
    return Dataset(
        name="digits",
        X=X,
        y=bunch.target.astype(np.int64),
        num_classes=10,
        feature_names=[f"px_{r}_{c}" for r in range(8) for c in range(8)],
        class_names=[str(i) for i in range(10)],
    )


def _standardised(name: str, loader) -> Dataset:
    bunch = loader()
    data = bunch.data.astype(np.float64)
    std = data.std(axis=0)
    std[std == 0] = 1.0
    X = ((data - data.mean(axis=0)) / std).astype(np.float32)
    names = [str(n).replace(" ", "_") for n in bunch.feature_names]
    classes = [str(c) for c in bunch.target_names]
    return Dataset(
        name=name,
        X=X,
        y=bunch.target.astype(np.int64),
        num_classes=len(classes),
        feature_names=names,
        class_names=classes,
    )


def load_breast_cancer_dataset() -> Dataset:
    """Wisconsin breast cancer: 569 rows, 30 standardised features, 2 classes."""
    from sklearn.datasets import load_breast_cancer

    return _standardised("breast_cancer", load_breast_cancer)


def load_wine_dataset() -> Dataset:
    """UCI wine: 178 rows, 13 standardised features, 3 classes."""
    from sklearn.datasets import load_wine

    return _standardised("wine", load_wine)


def synthetic_client_sizes(num_clients: int, rng: np.random.Generator) -> np.ndarray:
    """FedProx's client sizes: ``n_k = int(LogNormal(mean=4, sigma=2)) + 50``."""
    return rng.lognormal(4.0, 2.0, num_clients).astype(np.int64) + 50


def make_synthetic(
    alpha: float,
    beta: float,
    num_clients: int,
    rng: np.random.Generator,
    *,
    iid: bool = False,
    max_examples: int | None = None,
) -> tuple[Dataset, SyntheticTruth]:
    """FedProx's Synthetic(alpha, beta), one natural client per generated user.

    Recipe (alpha, beta are standard deviations)::

        u_k ~ N(0, alpha),  B_k ~ N(0, beta)
        W_k[i, j], b_k[j] ~ N(u_k, 1)          (W_k is 60 x 10)
        v_k[j] ~ N(B_k, 1)
        x ~ N(v_k, diag(j^-1.2)),  j = 1..60
        y = argmax softmax(x W_k + b_k)

    Since W_k and b_k share the mean u_k, u_k adds ``u_k (sum_j x_j + 1)`` to every
    class logit alike: the argmax, hence the labels, depend on alpha only through
    the random draws; client heterogeneity comes from the per-entry N(0, 1) draws
    and from beta. The IID variant draws one ``W, b ~ N(0, 1)`` shared by all clients and sets
    ``v_k = 0``. ``max_examples`` optionally caps ``n_k`` (the log-normal tail
    reaches tens of thousands); ``None`` keeps the published recipe.
    """
    if alpha < 0 or beta < 0:
        raise ValueError("alpha and beta are standard deviations and must be >= 0")
    d, c = SYNTHETIC_FEATURES, SYNTHETIC_CLASSES
    sizes = synthetic_client_sizes(num_clients, rng)
    if max_examples is not None:
        sizes = np.minimum(sizes, max_examples)
    u = rng.normal(0.0, alpha, num_clients)
    B = rng.normal(0.0, beta, num_clients)
    if iid:
        W_shared = rng.normal(0.0, 1.0, (d, c))
        b_shared = rng.normal(0.0, 1.0, c)
        W = np.broadcast_to(W_shared, (num_clients, d, c)).copy()
        b = np.broadcast_to(b_shared, (num_clients, c)).copy()
        v = np.zeros((num_clients, d))
    else:
        W = rng.normal(u[:, None, None], 1.0, (num_clients, d, c))
        b = rng.normal(u[:, None], 1.0, (num_clients, c))
        v = rng.normal(B[:, None], 1.0, (num_clients, d))
    std = np.arange(1, d + 1, dtype=np.float64) ** -0.6  # sqrt(j^-1.2)
    xs, ys, owners = [], [], []
    start = 0
    for k in range(num_clients):
        x = v[k] + rng.standard_normal((int(sizes[k]), d)) * std
        # argmax of softmax == argmax of the logits
        ys.append(np.argmax(x @ W[k] + b[k], axis=1))
        xs.append(x)
        owners.append(np.arange(start, start + len(x)))
        start += len(x)
    dataset = Dataset(
        name="synthetic",
        X=np.concatenate(xs).astype(np.float32),
        y=np.concatenate(ys).astype(np.int64),
        num_classes=c,
        feature_names=[f"x{j}" for j in range(d)],
        class_names=[str(i) for i in range(c)],
        natural_clients=owners,
    )
    return dataset, SyntheticTruth(sizes=sizes, u=u, B=B, v=v, W=W, b=b)


def load_dataset(
    name: str,
    *,
    num_clients: int,
    rng: np.random.Generator,
    synthetic_alpha: float = 1.0,
    synthetic_beta: float = 1.0,
    synthetic_iid: bool = False,
    synthetic_max_examples: int | None = None,
) -> Dataset:
    """Load a dataset by name (one of :data:`DATASETS`)."""
    if name == "digits":
        return load_digits_dataset()
    if name == "breast_cancer":
        return load_breast_cancer_dataset()
    if name == "wine":
        return load_wine_dataset()
    if name == "synthetic":
        dataset, _ = make_synthetic(
            synthetic_alpha,
            synthetic_beta,
            num_clients,
            rng,
            iid=synthetic_iid,
            max_examples=synthetic_max_examples,
        )
        return dataset
    raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
