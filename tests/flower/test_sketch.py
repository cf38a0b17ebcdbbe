"""The server's streamed norms and sketches (collectors.flower.sketch)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("flwr", reason="flwr is not installed: pip install -e '.[flower]'")

import torch  # noqa: E402
from flwr.app import Array, ArrayRecord  # noqa: E402

from collectors import stats  # noqa: E402
from collectors.flower import sketch as sk  # noqa: E402
from collectors.flower.records import flatten_arrays  # noqa: E402
from collectors.flower.sketch import FlatVector, Projector, sketch_matrix  # noqa: E402


def split(vec: np.ndarray, sizes: list[int]) -> FlatVector:
    """``vec`` cut into arrays of ``sizes`` (as a model's layers would be)."""
    assert sum(sizes) == vec.size
    return FlatVector(np.split(vec, np.cumsum(sizes)[:-1]))


def test_one_block_is_the_simulators_matrix() -> None:
    for p, d, seed in ((50, 8, 0), (1000, 64, 7), (3, 16, -5)):
        assert p <= sk.block_rows(d)
        assert torch.equal(sketch_matrix(p, d, seed), stats.sketch_matrix(p, d, seed))


def test_streamed_sketch_equals_the_product_with_the_whole_matrix() -> None:
    rng = np.random.default_rng(0)
    p, d, rows = 1000, 16, 128  # 8 blocks, the last one partial
    base = rng.normal(size=p)
    vecs = [base + rng.normal(size=p) for _ in range(3)]
    projector = Projector(p, d, 3, rows=rows, cache_bytes=0)  # regenerates every block
    # Arrays that cross block boundaries at other places than the blocks do.
    norms, sketches = projector.norms_and_sketches(
        split(base, [1, 300, 99, 600]), [split(v, [500, 500]) for v in vecs]
    )
    R = sketch_matrix(p, d, 3, rows).double()
    assert R.shape == (p, d) and not projector._blocks
    for i, v in enumerate(vecs):
        delta = v - base
        assert norms[i] == pytest.approx(np.linalg.norm(delta), rel=1e-12)
        np.testing.assert_allclose(
            sketches[i], (torch.from_numpy(delta) @ R).numpy(), rtol=1e-5, atol=1e-5
        )


def test_the_sketch_does_not_depend_on_how_the_vector_is_split_or_batched(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(1)
    p, d = 2000, 8
    base, vec = rng.normal(size=p), rng.normal(size=p)
    whole = split(vec, [2000])
    a = Projector(p, d, 11, rows=300).norms_and_sketches(FlatVector.from_numpy(base), [whole])
    b = Projector(p, d, 11, rows=300).norms_and_sketches(
        split(base, [7, 1993]), [split(vec, [299, 2, 1, 1698])]
    )
    np.testing.assert_array_equal(a[1], b[1])
    assert a[0][0] == pytest.approx(b[0][0], rel=1e-14)
    # One client alone or batched with others (and in batches of 1): the same sketch.
    monkeypatch.setattr(sk, "BLOCK_ELEMENTS", 300)  # 1 client slice per float32 product
    c = Projector(p, d, 11, rows=300).norms_and_sketches(
        FlatVector.from_numpy(base), [FlatVector.from_numpy(rng.normal(size=p)), whole]
    )
    np.testing.assert_allclose(c[1][1], a[1][0], rtol=1e-6, atol=1e-6)


def test_sketch_is_deterministic_for_a_seed() -> None:
    rng = np.random.default_rng(2)
    p, d = 5000, 32
    base, vec = FlatVector.from_numpy(np.zeros(p)), FlatVector.from_numpy(rng.normal(size=p))
    first = Projector(p, d, 42, rows=1024).norms_and_sketches(base, [vec])[1]
    again = Projector(p, d, 42, rows=1024).norms_and_sketches(base, [vec])[1]
    other = Projector(p, d, 43, rows=1024).norms_and_sketches(base, [vec])[1]
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)
    # Blocks after the first come from their own seeds: no two blocks repeat.
    blocks = [sk.sketch_block(p, d, 42, i, 1024) for i in range(4)]
    assert all(not torch.equal(blocks[0][:10], b[:10]) for b in blocks[1:])
    assert sk.block_seed(42, 0) == 42 and len({sk.block_seed(42, i) for i in range(100)}) == 100


def test_cosines_and_norms_survive_the_projection() -> None:
    rng = np.random.default_rng(3)
    p, d = 20_000, 512
    x = rng.normal(size=p)
    noise = rng.normal(size=p)
    y = 0.6 * x + 0.8 * noise  # true cosine about 0.6
    true_cos = x @ y / (np.linalg.norm(x) * np.linalg.norm(y))
    norms, sketches = Projector(p, d, 0, rows=3000).norms_and_sketches(
        FlatVector.from_numpy(np.zeros(p)), [FlatVector.from_numpy(x), FlatVector.from_numpy(y)]
    )
    sx, sy = sketches
    assert sx @ sy / (np.linalg.norm(sx) * np.linalg.norm(sy)) == pytest.approx(true_cos, abs=0.1)
    assert norms[0] == pytest.approx(np.linalg.norm(x), rel=1e-12)
    assert np.linalg.norm(sx) == pytest.approx(norms[0], rel=0.15)
    assert np.linalg.norm(sy) == pytest.approx(norms[1], rel=0.15)


def test_no_block_is_bigger_than_the_budget_and_big_matrices_are_not_kept(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(sk, "BLOCK_ELEMENTS", 4096)
    seen: list[tuple[int, ...]] = []
    real = sk.sketch_block

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        block = real(*args, **kwargs)
        seen.append(tuple(block.shape))
        return block

    monkeypatch.setattr(sk, "sketch_block", spy)
    p, d = 10_000, 64
    projector = Projector(p, d, 0, cache_bytes=0)
    zeros = FlatVector.from_numpy(np.zeros(p))
    projector.norms_and_sketches(zeros, [FlatVector.from_numpy(np.ones(p))] * 5)
    assert seen and all(r * c <= 4096 for r, c in seen) and sum(r for r, _ in seen) == p
    assert not projector._blocks
    # Small enough: generated once, kept for the next call (the aggregate).
    seen.clear()
    small = Projector(100, 8, 0)
    for _ in range(2):
        small.norms_and_sketches(
            FlatVector.from_numpy(np.zeros(100)), [FlatVector.from_numpy(np.ones(100))]
        )
    assert len(seen) == 1


def test_flat_vector_reads_arrays_in_place_and_in_flower_order() -> None:
    rng = np.random.default_rng(4)
    arrays = ArrayRecord(
        {
            "w": Array(rng.normal(size=(5, 7)).astype(np.float32)),
            "f": Array(np.asfortranarray(rng.normal(size=(3, 4)))),  # read through a copy
            "h": Array(rng.normal(size=11).astype(np.float16)),
            "i": Array(np.arange(6, dtype=np.int64).reshape(2, 3)),
            "e": Array(np.zeros((0, 3), np.float32)),
        }
    )
    keys = ["h", "w", "e", "i", "f"]
    flat = FlatVector.from_arrays(arrays, keys)
    expected = flatten_arrays(arrays, keys)
    assert flat is not None and expected is not None and flat.size == expected.size
    np.testing.assert_array_equal(flat.slice(0, flat.size), expected)
    np.testing.assert_array_equal(flat.slice(9, 40), expected[9:40])
    w = sk._flat_view(arrays["w"])
    assert w is not None and w.base is arrays["w"].data  # no copy of the reply
    assert FlatVector.from_arrays(arrays, ["w", "missing"]) is None
    assert FlatVector.from_arrays(ArrayRecord({"b": Array(np.array([True]))})) is None


def test_nonfinite_updates_stay_nonfinite() -> None:
    p = 50
    vec = np.ones(p)
    vec[3] = np.nan
    norms, sketches = Projector(p, 4, 0).norms_and_sketches(
        FlatVector.from_numpy(np.zeros(p)), [FlatVector.from_numpy(vec)]
    )
    assert np.isnan(norms[0]) and np.isnan(sketches).all()
    norms, sketches = Projector(p, 0, 0).norms_and_sketches(
        FlatVector.from_numpy(np.zeros(p)), [FlatVector.from_numpy(np.ones(p))]
    )
    assert norms[0] == pytest.approx(np.sqrt(p)) and sketches is None
