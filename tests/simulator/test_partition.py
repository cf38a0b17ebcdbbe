"""Partitions: every row exactly once, and the skew each kind promises."""

from __future__ import annotations

import numpy as np
import pytest

from simulator.data import load_digits_dataset, make_synthetic
from simulator.partition import (
    dirichlet_partition,
    feature_skew_partition,
    iid_partition,
    label_proportions,
    make_partition,
    quantity_skew_partition,
    split_held_out,
)


@pytest.fixture(scope="module")
def digits():
    return load_digits_dataset()


def _assert_exact_cover(partition, n: int) -> None:
    rows = np.concatenate(partition.indices)
    assert len(rows) == n
    assert np.array_equal(np.sort(rows), np.arange(n))


def test_iid_partition_is_balanced(digits) -> None:
    p = iid_partition(len(digits.y), 10, np.random.default_rng(0))
    _assert_exact_cover(p, len(digits.y))
    assert p.sizes().max() - p.sizes().min() <= 1
    props = label_proportions(digits.y, p, 10)
    assert np.abs(props - 0.1).max() < 0.08


def test_dirichlet_label_mixing_follows_alpha(digits) -> None:
    """Small alpha: clients dominated by few classes; large alpha: close to the global mix."""
    global_p = np.bincount(digits.y) / len(digits.y)
    tv, top_share = {}, {}
    for alpha in (0.05, 0.5, 100.0):
        p = dirichlet_partition(digits.y, 20, alpha, np.random.default_rng(1))
        _assert_exact_cover(p, len(digits.y))
        assert p.sizes().min() >= 2
        props = label_proportions(digits.y, p, 10)
        tv[alpha] = float((0.5 * np.abs(props - global_p).sum(axis=1)).mean())
        top_share[alpha] = float(props.max(axis=1).mean())
    assert tv[0.05] > tv[0.5] > tv[100.0]
    assert tv[100.0] < 0.15
    assert tv[0.05] > 0.6
    assert top_share[0.05] > 0.7
    assert top_share[100.0] < 0.25


def test_dirichlet_tops_up_when_clients_outnumber_rows() -> None:
    y = np.repeat(np.arange(5), 20)  # 100 rows, 40 clients need 2 each
    p = dirichlet_partition(y, 40, 0.01, np.random.default_rng(2), max_tries=3)
    _assert_exact_cover(p, 100)
    assert p.sizes().min() >= 2
    with pytest.raises(ValueError, match="cannot give"):
        dirichlet_partition(y, 60, 0.5, np.random.default_rng(2))


def test_quantity_skew_varies_sizes_not_labels(digits) -> None:
    n = len(digits.y)
    p = quantity_skew_partition(n, 20, 0.3, np.random.default_rng(3))
    _assert_exact_cover(p, n)
    sizes = p.sizes()
    assert sizes.min() >= 2
    assert sizes.max() / np.median(sizes) > 2.5
    big = np.argsort(sizes)[-5:]  # the large clients still see an IID label mix
    props = label_proportions(digits.y, p, 10)[big]
    assert np.abs(props - 0.1).max() < 0.1


def test_feature_skew_gives_each_client_its_own_affine_map(digits) -> None:
    p = feature_skew_partition(digits.X, 8, 0.5, np.random.default_rng(4))
    _assert_exact_cover(p, len(digits.y))
    assert p.scale.shape == (8, 64) and p.shift.shape == (8, 64)
    assert np.all(p.scale > 0)
    assert p.shift.std(axis=0).mean() > 0.05  # clients differ
    none = feature_skew_partition(digits.X, 8, 0.0, np.random.default_rng(4))
    assert np.all(none.scale == 1) and np.all(none.shift == 0)


def test_natural_partition_uses_synthetic_clients() -> None:
    ds, truth = make_synthetic(0.5, 0.5, 7, np.random.default_rng(5), max_examples=100)
    p = make_partition("natural", ds, 7, np.random.default_rng(0))
    assert p.sizes().tolist() == truth.sizes.tolist()
    with pytest.raises(ValueError, match="no natural split"):
        make_partition("natural", load_digits_dataset(), 7, np.random.default_rng(0))


def test_held_out_split_keeps_a_training_row() -> None:
    rng = np.random.default_rng(6)
    tr, te = split_held_out(np.arange(100, 150), 0.2, rng)
    assert len(te) == 10 and len(tr) == 40
    assert set(tr) | set(te) == set(range(100, 150)) and not set(tr) & set(te)
    tr, te = split_held_out(np.array([7]), 0.2, rng)
    assert tr.tolist() == [7] and len(te) == 0
    tr, te = split_held_out(np.array([7, 8]), 0.2, rng)
    assert len(tr) == 1 and len(te) == 1
