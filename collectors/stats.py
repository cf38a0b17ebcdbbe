"""What a client computes and shares (DESIGN.md, "What a client shares"): the client side.

Feature bin edges (from reference data, shared through the run registration),
label and feature histograms on those edges, the update sketch (a fixed-seed
random projection of the flattened model delta) and local-DP noise on the
histograms. The batched forms take all clients of a round at once (rows
tagged with their client), so the simulator never loops over clients; the
one-client forms are what an SDK user or the Flower mod calls. The simulator
imports these from here, never the other way round. Pure functions, no I/O;
numpy only (torch is imported by :func:`sketch_matrix` alone).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = [
    "feature_bin_edges",
    "label_histogram",
    "label_histograms",
    "client_feature_histograms",
    "feature_histograms",
    "sketch_matrix",
    "sketch",
    "add_histogram_noise",
]


def feature_bin_edges(X_ref: np.ndarray, bins: int) -> list[np.ndarray]:
    """Per feature, strictly increasing edges at the reference quantiles 0, 1/bins, ..., 1.

    Repeated quantiles (discrete or constant features) are merged, so a feature
    can get fewer than ``bins`` bins; a constant feature ``v`` gets the single bin
    ``[v, v + 1]``. Values outside the edges are counted in the first or last bin
    (see :func:`feature_histograms`), so the outer bins are open-ended.
    """
    if bins < 1:
        raise ValueError("bins must be >= 1")
    qs = np.quantile(X_ref.astype(np.float64), np.linspace(0.0, 1.0, bins + 1), axis=0)
    edges = []
    for f in range(X_ref.shape[1]):
        e = np.unique(np.round(qs[:, f], 6))
        if len(e) < 2:
            e = np.array([e[0], e[0] + 1.0])
        edges.append(e)
    return edges


def label_histograms(
    y: np.ndarray, client: np.ndarray, num_clients: int, num_classes: int
) -> np.ndarray:
    """``[K, C]`` label counts; ``client[i]`` is the client of row i."""
    flat = np.bincount(client * num_classes + y, minlength=num_clients * num_classes)
    return flat.reshape(num_clients, num_classes).astype(np.float64)


def feature_histograms(
    X: np.ndarray, client: np.ndarray, num_clients: int, edges: list[np.ndarray]
) -> np.ndarray:
    """``[K, F, max_bins]`` counts on the shared edges (unused trailing bins stay 0).

    Bin of value x for feature f: ``clip(searchsorted(edges_f, x, 'right') - 1, 0, nb_f - 1)``,
    i.e. left-closed bins, the last one closed, out-of-range values in the outer bins.
    """
    n_features = len(edges)
    max_bins = max(len(e) - 1 for e in edges)
    nb = np.array([len(e) - 1 for e in edges])
    bin_index = np.empty(X.shape, dtype=np.int64)
    for f, e in enumerate(edges):
        bin_index[:, f] = np.searchsorted(e, X[:, f], side="right") - 1
    bin_index = np.clip(bin_index, 0, nb - 1)
    cell = (client[:, None] * n_features + np.arange(n_features)) * max_bins + bin_index
    flat = np.bincount(cell.ravel(), minlength=num_clients * n_features * max_bins)
    return flat.reshape(num_clients, n_features, max_bins).astype(np.float64)


def sketch_matrix(num_params: int, dim: int, seed: int) -> torch.Tensor:
    """``R`` of shape ``[P, dim]``, entries ``N(0, 1) / sqrt(dim)`` from ``seed``.

    Johnson-Lindenstrauss: ``E ||R^T x||^2 = ||x||^2`` and inner products (hence
    cosines) are preserved up to ``O(1/sqrt(dim))``; the weights themselves are not
    recoverable from ``dim << P`` numbers.
    """
    import torch  # only who sketches needs torch; histograms and edges are numpy

    gen = torch.Generator().manual_seed(seed)
    return torch.randn(num_params, dim, generator=gen) / dim**0.5


def sketch(deltas: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """All clients' sketches in one product: ``[K, P] @ [P, dim]``. NaN in, NaN out."""
    return deltas @ matrix


def add_histogram_noise(
    hist: np.ndarray, mechanism: str, scale: float, rng: np.random.Generator
) -> np.ndarray:
    """Local DP: independent Laplace(b=scale) or Gaussian(sigma=scale) noise on every bin.

    Counts are not clipped at 0 afterwards: clipping biases the estimate, and the
    receiver knows the declared scale (``ClientReport.histogram_noise``).
    """
    if mechanism == "laplace":
        return hist + rng.laplace(0.0, scale, hist.shape)
    if mechanism == "gaussian":
        return hist + rng.normal(0.0, scale, hist.shape)
    raise ValueError(f"unknown noise mechanism {mechanism!r}; expected laplace or gaussian")


def label_histogram(y: np.ndarray, num_classes: int) -> np.ndarray:
    """One client's ``[C]`` label counts (labels outside ``0..C-1`` are not counted)."""
    y = np.asarray(y, dtype=np.int64)
    y = y[(y >= 0) & (y < num_classes)]
    return np.bincount(y, minlength=num_classes).astype(np.float64)


def client_feature_histograms(X: np.ndarray, edges: list[np.ndarray]) -> list[np.ndarray]:
    """One client's counts per feature on the shared edges (the binning of :func:`feature_histograms`)."""
    X = np.asarray(X, dtype=np.float64)
    out = []
    for f, e in enumerate(edges):
        nb = len(e) - 1
        idx = np.clip(np.searchsorted(e, X[:, f], side="right") - 1, 0, nb - 1)
        out.append(np.bincount(idx, minlength=nb).astype(np.float64))
    return out
