"""Local training: the batched (vmap) path equals the sequential reference; FedAvg reduces to SGD."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from simulator.data import load_digits_dataset
from simulator.models import flatten, flatten_stacked, get_params, make_model
from simulator.scenario import Scenario
from simulator.simulation import Simulation
from simulator.train import make_schedule, train_batched, train_sequential


@pytest.fixture(scope="module")
def digits_tensors():
    ds = load_digits_dataset()
    return torch.from_numpy(ds.X), torch.from_numpy(ds.y)


def test_schedule_visits_every_row_once_per_epoch() -> None:
    sizes = np.array([5, 1, 12, 3])
    keys = np.random.default_rng(0).random((2, sizes.sum()))
    sch = make_schedule(sizes, 2, 4, keys)
    assert sch.steps.tolist() == [4, 2, 6, 2]  # 2 epochs * ceil(n / 4)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    for k, n in enumerate(sizes):
        used = sch.client_idx(k)[sch.client_weight(k) > 0].numpy()
        assert sorted(used.tolist()) == sorted(list(range(offsets[k], offsets[k] + n)) * 2)
        # every step of a client uses at least one row: none is padding to a larger client
        assert sch.client_idx(k).shape[0] == sch.steps[k]
        assert (sch.client_weight(k).sum(dim=1) > 0).all()
    # no padding to the largest client: one line per step that some client really takes
    assert sch.idx.shape == (int(sch.steps.sum()), 4)
    assert sch.seen().tolist() == (2 * sizes).tolist()
    # epoch 1 of client 2 is a different order than epoch 0
    first = sch.client_idx(2)[:3][sch.client_weight(2)[:3] > 0]
    second = sch.client_idx(2)[3:6][sch.client_weight(2)[3:6] > 0]
    assert not torch.equal(first, second)


@pytest.mark.parametrize(
    ("kind", "mu", "epochs"),
    [("mlp", 0.0, 1), ("mlp", 0.5, 2), ("logreg", 0.0, 2)],
)
def test_batched_equals_sequential(digits_tensors, kind: str, mu: float, epochs: int) -> None:
    """Uneven clients (1 to 90 rows): the masked, stacked vmap path ends where plain SGD ends."""
    X, Y = digits_tensors
    sizes = np.array([90, 1, 17, 33, 16, 2, 64])
    keys = np.random.default_rng(1).random((epochs, sizes.sum()))
    sch = make_schedule(sizes, epochs, 16, keys)
    model = make_model(kind, 64, 10, (32,), seed=3)
    g = get_params(model)
    a = train_batched(model, g, X, Y, sch, lr=0.2, mu=mu)
    b = train_sequential(model, g, X, Y, sch, lr=0.2, mu=mu)
    pa, pb = flatten_stacked(a.params), flatten_stacked(b.params)
    assert not torch.allclose(pa, flatten(g).expand_as(pa))  # training happened
    torch.testing.assert_close(pa, pb, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(a.loss_sum, b.loss_sum, atol=1e-4, rtol=1e-5)
    assert torch.equal(a.correct, b.correct)
    assert a.seen.tolist() == (epochs * sizes).tolist()
    # the global parameters were not modified in place
    torch.testing.assert_close(flatten(g), flatten(get_params(model)))


def test_simulation_engines_give_the_same_global_model() -> None:
    """Whole rounds (sampling, FedAvg, FedProx) through both engines agree to float tolerance."""
    common = dict(
        num_clients=12,
        rounds=3,
        partition="dirichlet",
        alpha=0.5,
        algorithm="fedprox",
        mu=0.1,
        sample_fraction=0.5,
        local_epochs=2,
        centralized_baseline=False,
    )
    sims = {e: Simulation(Scenario(**common, engine=e)) for e in ("batched", "sequential")}
    for r in (1, 2, 3):
        outs = {e: s.run_round(r) for e, s in sims.items()}
        assert outs["batched"].sampled == outs["sequential"].sampled
        rb = {x["client_id"]: x for x in outs["batched"].reports}
        rs = {x["client_id"]: x for x in outs["sequential"].reports}
        assert rb.keys() == rs.keys()
        for cid in rb:
            assert rb[cid]["update_norm"] == pytest.approx(rs[cid]["update_norm"], rel=1e-4)
            assert rb[cid]["train_accuracy"] == pytest.approx(rs[cid]["train_accuracy"], abs=1e-6)
    torch.testing.assert_close(
        flatten(sims["batched"].global_params),
        flatten(sims["sequential"].global_params),
        atol=1e-5,
        rtol=1e-4,
    )


def test_fedavg_one_client_one_step_is_centralized_sgd() -> None:
    """One client, batch = its whole training set, one epoch: w1 = w0 - lr * grad mean CE."""
    scen = Scenario(
        num_clients=1,
        rounds=1,
        batch_size=10_000,
        local_epochs=1,
        lr=0.5,
        model="mlp",
        hidden=[16],
        centralized_baseline=False,
        seed=5,
    )
    sim = Simulation(scen)
    x = torch.from_numpy(sim.fed.x_train[0])
    y = torch.from_numpy(sim.fed.y_train[0])
    reference = make_model("mlp", 64, 10, [16], seed=5)
    torch.testing.assert_close(flatten(get_params(reference)), flatten(sim.global_params))
    opt = torch.optim.SGD(reference.parameters(), lr=0.5)
    loss = F.cross_entropy(reference(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    expected_loss = loss.detach().item()
    out = sim.run_round(1)
    torch.testing.assert_close(
        flatten(sim.global_params), flatten(get_params(reference)), atol=1e-6, rtol=1e-5
    )
    rep = out.reports[0]
    assert rep["train_loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert rep["num_examples"] == len(y)


def test_evaluate_stacked_buckets_clients_and_equals_one_client_at_a_time(digits_tensors) -> None:
    """Clients of 1 to 300 rows land in different width buckets; each gets its own model's CE and accuracy."""
    from simulator.train import evaluate_stacked

    X, Y = digits_tensors
    rng = np.random.default_rng(4)
    sizes = [1, 2, 3, 7, 16, 17, 90, 300]
    rows = [rng.choice(len(Y), n, replace=False) for n in sizes]
    models = [make_model("mlp", 64, 10, (16,), seed=s) for s in range(len(sizes))]
    stacked = {n: torch.stack([get_params(m)[n] for m in models]) for n in get_params(models[0])}
    ce, acc = evaluate_stacked(models[0], stacked, X, Y, rows)
    for k, (m, r) in enumerate(zip(models, rows, strict=True)):
        with torch.no_grad():
            logits = m(X[r])
        assert ce[k].item() == pytest.approx(F.cross_entropy(logits, Y[r]).item(), rel=1e-5)
        assert acc[k].item() == pytest.approx((logits.argmax(1) == Y[r]).float().mean().item())


def test_a_model_that_is_not_a_linear_relu_stack_goes_through_vmap_and_still_agrees(digits_tensors) -> None:
    """The hand-written gradient covers Linear/ReLU stacks; anything else takes vmap(grad(L))."""
    from simulator.train import _linear_plan

    X, Y = digits_tensors
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.Tanh(), torch.nn.Linear(16, 10))
    assert _linear_plan(model) is None and _linear_plan(make_model("mlp", 64, 10, (8,))) is not None
    sizes = np.array([40, 3, 17])
    sch = make_schedule(sizes, 2, 16, np.random.default_rng(2).random((2, sizes.sum())))
    g = get_params(model)
    a = train_batched(model, g, X, Y, sch, lr=0.2, mu=0.1)
    b = train_sequential(model, g, X, Y, sch, lr=0.2, mu=0.1)
    torch.testing.assert_close(flatten_stacked(a.params), flatten_stacked(b.params), atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(a.loss_sum, b.loss_sum, atol=1e-4, rtol=1e-5)
