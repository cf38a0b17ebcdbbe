"""Local training of many clients: one batched computation, and the sequential reference.

Both paths take the same :class:`Schedule` (which rows each client uses at each
local step), so they run the same SGD and must end at the same parameters up to
float rounding; ``tests/simulator/test_train.py`` holds them to that.

Local objective of client k at step s (FedProx; FedAvg is ``mu = 0``)::

    L_k(w) = (1 / |b|) sum_{i in b} CE(f(w; x_i), y_i) + (mu / 2) ||w - w_global||^2
    w <- w - lr * grad L_k(w)

Batched path: parameters are stacked ``{name: [K, ...]}`` and one step of all
clients is ``vmap(grad(L))`` through ``torch.func.functional_call``. Clients have
different numbers of steps: they are sorted by step count (descending), so the
clients still training at step s are a prefix ``[:a_s]`` and only that prefix is
computed and updated; the others are masked out and their parameters stop
changing. A short last batch is padded and its padding masked by zero weights.
No client is padded to the largest one: the schedule stores each client's own
steps back to back, and step s gathers the line of every client still training.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from simulator.models import Params, flatten, flatten_stacked


@dataclass(frozen=True)
class Schedule:
    """Which rows each client uses at each local step, with no client padded to the largest.

    Client k's steps are rows ``start[k] .. start[k] + steps[k] - 1`` of ``idx`` and
    ``weight`` (``[sum_k steps_k, B]``): ``idx[start[k] + s, j]`` is a row of the
    round's data tensor used at client k's step s, ``weight`` is 1 for a real row and
    0 for padding of a short last batch (``B = min(batch_size, max n_k)``).
    ``steps[k] = epochs * ceil(n_k / batch_size)``. Memory is proportional to the
    rows the clients really have: a dense ``[K, max_k steps_k, B]`` layout would, at
    10,000 clients with log-normal sizes, be about ``K * max / mean`` times larger
    (hundreds of times for FedProx's Synthetic sizes).
    """

    idx: torch.Tensor  # [T, B] int64, T = sum_k steps_k
    weight: torch.Tensor  # [T, B] float32
    steps: torch.Tensor  # [K] int64
    start: torch.Tensor  # [K] int64: client k's first row in idx / weight

    @property
    def num_clients(self) -> int:
        return int(self.steps.shape[0])

    def client_idx(self, k: int) -> torch.Tensor:
        """``[steps_k, B]``: client k's rows, one line per local step."""
        first = int(self.start[k])
        return self.idx[first : first + int(self.steps[k])]

    def client_weight(self, k: int) -> torch.Tensor:
        first = int(self.start[k])
        return self.weight[first : first + int(self.steps[k])]

    def seen(self) -> torch.Tensor:
        """``[K]``: examples each client processes (``epochs * n_k``)."""
        owner = torch.repeat_interleave(torch.arange(self.num_clients), self.steps)
        return torch.zeros(self.num_clients).index_add_(0, owner, self.weight.sum(dim=1))


@dataclass
class LocalTraining:
    """What local training produced, per client (rows in the order of the schedule)."""

    params: Params  # {name: [K, ...]}, views into ``flat``
    flat: torch.Tensor  # [K, P] every client's parameters, flattened in named_parameters() order
    loss_sum: torch.Tensor  # [K] sum of per-example CE over every step (running, as clients log it)
    correct: torch.Tensor  # [K] correct predictions over every step
    seen: torch.Tensor  # [K] examples processed (epochs * n_k)

    def train_loss(self) -> torch.Tensor:
        return self.loss_sum / self.seen.clamp_min(1)

    def train_accuracy(self) -> torch.Tensor:
        return self.correct / self.seen.clamp_min(1)


def make_schedule(sizes: np.ndarray, epochs: int, batch_size: int, keys: np.ndarray) -> Schedule:
    """Shuffle every client's rows once per epoch and cut them into batches.

    ``sizes[k]`` is client k's row count; its rows are ``offset_k .. offset_k + n_k - 1``
    of the round's data (clients concatenated in order). ``keys[e]`` holds one random
    sort key per row for epoch e: a client's rows are visited in key order. The
    caller draws keys per client, so a client's schedule does not depend on who
    else trains this round.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    k_clients = len(sizes)
    if epochs < 1 or batch_size < 1:
        raise ValueError("epochs and batch_size must be >= 1")
    total = int(sizes.sum())
    if keys.shape != (epochs, total):
        raise ValueError(f"keys must have shape ({epochs}, {total}), got {keys.shape}")
    batches = -(-sizes // batch_size)
    steps = epochs * batches
    start = np.concatenate([[0], np.cumsum(steps)[:-1]]).astype(np.int64) if k_clients else steps
    # no client fills more than min(batch_size, n_max) slots: pad only that far
    width = int(min(batch_size, sizes.max())) if k_clients else batch_size
    total_steps = int(steps.sum())
    idx = np.zeros((total_steps, width), dtype=np.int64)
    weight = np.zeros((total_steps, width), dtype=np.float32)
    client_of = np.repeat(np.arange(k_clients), sizes)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    pos = np.arange(total) - offsets[client_of]
    for e in range(epochs):
        order = np.lexsort((keys[e], client_of))  # by client, then key; client blocks stay in place
        line = start[client_of] + e * batches[client_of] + pos // batch_size
        slot = pos % batch_size
        idx[line, slot] = order
        weight[line, slot] = 1.0
    return Schedule(
        torch.from_numpy(idx),
        torch.from_numpy(weight),
        torch.from_numpy(steps),
        torch.from_numpy(start),
    )


def _views(flat: torch.Tensor, like: Params) -> Params:
    """``{name: [K, *shape]}`` views into the columns of ``flat`` ``[K, P]``."""
    out: Params = {}
    start = 0
    for name, p in like.items():
        out[name] = flat[:, start : start + p.numel()].view(flat.shape[0], *p.shape)
        start += p.numel()
    return out


def _prox(params: Params, anchor: Params) -> torch.Tensor:
    return sum(((params[n] - anchor[n]) ** 2).sum() for n in params)  # type: ignore[return-value]


def _linear_plan(model: nn.Module) -> list[tuple[str, str] | None] | None:
    """For an ``nn.Sequential`` of ``Linear`` (with bias) and ``ReLU`` layers, the parameter
    names of each layer (None for a ReLU); None for any other model."""
    if not isinstance(model, nn.Sequential):
        return None
    plan: list[tuple[str, str] | None] = []
    for name, layer in model.named_children():
        if isinstance(layer, nn.Linear) and layer.bias is not None:
            plan.append((f"{name}.weight", f"{name}.bias"))
        elif isinstance(layer, nn.ReLU):
            plan.append(None)
        else:
            return None
    return plan


def _stack_grads(
    plan: list[tuple[str, str] | None],
    p: Params,
    x: torch.Tensor,
    y: torch.Tensor,
    w: torch.Tensor,
    anchor: Params,
    mu: float,
) -> tuple[Params, torch.Tensor, torch.Tensor]:
    """The gradient ``vmap(grad(L))`` computes, written out for Linear/ReLU stacks with ``bmm``.

    Why: a vmapped autograd call costs milliseconds of dispatch whatever the number of
    clients, and with log-normal client sizes most steps train a handful of large
    clients (the largest of 10,000 takes thousands of steps), so that fixed cost was
    the round. Same objective: mean CE over real rows (``w``) plus ``mu/2 ||p - anchor||^2``.
    """
    inputs = []
    h = x
    for layer in plan:
        inputs.append(h)
        h = (
            h.clamp_min(0)
            if layer is None
            else torch.baddbmm(p[layer[1]].unsqueeze(1), h, p[layer[0]].transpose(1, 2))
        )
    logp = h.log_softmax(dim=-1)
    target = y.unsqueeze(-1)
    ce = -logp.gather(-1, target).squeeze(-1)
    total = (ce * w).sum(dim=1)
    hits = ((h.argmax(dim=-1) == y).float() * w).sum(dim=1)
    g = logp.exp().scatter_add_(-1, target, torch.full_like(target, -1.0, dtype=logp.dtype))
    g = g * (w / w.sum(dim=1, keepdim=True).clamp_min(1.0)).unsqueeze(-1)
    grads: Params = {}
    for i in range(len(plan) - 1, -1, -1):
        layer = plan[i]
        if layer is None:
            g = g * (inputs[i] > 0)
            continue
        grads[layer[0]] = torch.bmm(g.transpose(1, 2), inputs[i])
        grads[layer[1]] = g.sum(dim=1)
        if i:
            g = torch.bmm(g, p[layer[0]])
    if mu:
        for name in grads:
            grads[name] = grads[name] + mu * (p[name] - anchor[name])
    return grads, total, hits


def train_batched(
    model: nn.Module,
    global_params: Params,
    X: torch.Tensor,
    Y: torch.Tensor,
    schedule: Schedule,
    *,
    lr: float,
    mu: float = 0.0,
) -> LocalTraining:
    """All clients of ``schedule`` at once over stacked parameters: ``vmap(grad(L))``, or for
    Linear/ReLU stacks (the simulator's models) the same gradient written out with ``bmm``."""
    k_clients = schedule.num_clients
    steps = schedule.steps
    order = torch.from_numpy(np.argsort(-steps.numpy(), kind="stable"))
    first, steps_sorted = schedule.start[order], steps[order]
    # one [K, P] buffer; the per-parameter tensors are views into it, so updates land in
    # place and the flat deltas need no concatenation afterwards
    flat = flatten(global_params).repeat(k_clients, 1)
    params = _views(flat, global_params)
    loss_sum = torch.zeros(k_clients)
    correct = torch.zeros(k_clients)

    def loss_fn(p: Params, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor):
        logits = functional_call(model, p, (x,))
        ce = F.cross_entropy(logits, y, reduction="none")
        total = (ce * w).sum()
        loss = total / w.sum().clamp_min(1.0)
        if mu:
            loss = loss + 0.5 * mu * _prox(p, global_params)
        hits = ((logits.argmax(dim=1) == y).float() * w).sum()
        return loss, (total.detach(), hits.detach())

    plan = _linear_plan(model)
    if plan is None:
        step_all = vmap(grad(loss_fn, has_aux=True))
    else:

        def step_all(view: Params, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor):  # type: ignore[misc]
            grads, total, hits = _stack_grads(plan, view, x, y, w, global_params, mu)
            return grads, (total, hits)

    max_steps = int(steps_sorted[0]) if k_clients else 0
    ascending = np.sort(steps.numpy())
    # clients still training at step s: those with more than s steps (a prefix of the order)
    active = (k_clients - np.searchsorted(ascending, np.arange(max_steps), side="right")).tolist()
    with torch.no_grad():
        for s in range(max_steps):
            a = active[s]
            line = first[:a] + s  # step s of each client still training
            rows = schedule.idx[line]
            view = {n: p[:a] for n, p in params.items()}
            grads, (ls, hits) = step_all(view, X[rows], Y[rows], schedule.weight[line])
            for n, p in params.items():
                p[:a].sub_(grads[n], alpha=lr)
            loss_sum[:a] += ls
            correct[:a] += hits
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(k_clients)
    flat = flat[inverse]
    return LocalTraining(
        params=_views(flat, global_params),
        flat=flat,
        loss_sum=loss_sum[inverse],
        correct=correct[inverse],
        seen=schedule.seen(),
    )


def train_sequential(
    model: nn.Module,
    global_params: Params,
    X: torch.Tensor,
    Y: torch.Tensor,
    schedule: Schedule,
    *,
    lr: float,
    mu: float = 0.0,
) -> LocalTraining:
    """The reference: one client after another, plain autograd and ``torch.optim.SGD``."""
    local = copy.deepcopy(model)
    named = dict(local.named_parameters())
    k_clients = schedule.num_clients
    loss_sum = torch.zeros(k_clients)
    correct = torch.zeros(k_clients)
    out: dict[str, list[torch.Tensor]] = {n: [] for n in named}
    for k in range(k_clients):
        with torch.no_grad():
            for n, p in named.items():
                p.copy_(global_params[n])
        opt = torch.optim.SGD(local.parameters(), lr=lr)
        client_idx, client_weight = schedule.client_idx(k), schedule.client_weight(k)
        for s in range(int(schedule.steps[k])):
            rows = client_idx[s][client_weight[s] > 0]
            logits = local(X[rows])
            ce = F.cross_entropy(logits, Y[rows])
            loss = ce + 0.5 * mu * _prox(named, global_params) if mu else ce
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                loss_sum[k] += ce.detach() * len(rows)
                correct[k] += (logits.argmax(dim=1) == Y[rows]).sum()
        for n, p in named.items():
            out[n].append(p.detach().clone())
    params = {
        n: torch.stack(v) if v else global_params[n].new_zeros((0, *global_params[n].shape))
        for n, v in out.items()
    }
    return LocalTraining(params, flatten_stacked(params), loss_sum, correct, schedule.seen())


def train(engine: str, *args, **kwargs) -> LocalTraining:
    """Dispatch on ``engine`` ("batched" or "sequential")."""
    if engine == "batched":
        return train_batched(*args, **kwargs)
    if engine == "sequential":
        return train_sequential(*args, **kwargs)
    raise ValueError(f"unknown engine {engine!r}; expected batched or sequential")


@torch.no_grad()
def evaluate_groups(
    model: nn.Module,
    params: Params,
    X: torch.Tensor,
    Y: torch.Tensor,
    group: torch.Tensor,
    num_groups: int,
    *,
    chunk: int = 65536,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One model on many rows; per group (client) the summed CE, correct count and row count."""
    loss = torch.zeros(num_groups)
    hits = torch.zeros(num_groups)
    count = torch.zeros(num_groups)
    for start in range(0, len(Y), chunk):
        x, y, g = X[start : start + chunk], Y[start : start + chunk], group[start : start + chunk]
        logits = functional_call(model, params, (x,))
        loss.index_add_(0, g, F.cross_entropy(logits, y, reduction="none"))
        hits.index_add_(0, g, (logits.argmax(dim=1) == y).float())
        count.index_add_(0, g, torch.ones_like(y, dtype=torch.float32))
    return loss, hits, count


@torch.no_grad()
def evaluate_stacked(
    model: nn.Module, params: Params, X: torch.Tensor, Y: torch.Tensor, rows: list[np.ndarray]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Client k's own model (``params[:, k]``) on its own rows ``rows[k]``: per client (CE mean, accuracy).

    Clients are bucketed by row count (powers of two), and each bucket is padded
    only to its own width, so one large client does not make every client's
    evaluation as wide as its own.
    """
    k_clients = len(rows)
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    ce_out = torch.zeros(k_clients)
    acc_out = torch.zeros(k_clients)

    def one(p: Params, x: torch.Tensor, y: torch.Tensor, wt: torch.Tensor):
        logits = functional_call(model, p, (x,))
        n = wt.sum().clamp_min(1.0)
        ce = (F.cross_entropy(logits, y, reduction="none") * wt).sum() / n
        acc = ((logits.argmax(dim=1) == y).float() * wt).sum() / n
        return ce, acc

    buckets = np.ceil(np.log2(np.maximum(lengths, 1))).astype(np.int64)
    for b in np.unique(buckets):
        members = np.flatnonzero(buckets == b)
        width = int(max(lengths[members].max(), 1))
        idx = torch.zeros((len(members), width), dtype=torch.int64)
        w = torch.zeros((len(members), width))
        for i, k in enumerate(members):
            idx[i, : lengths[k]] = torch.from_numpy(np.asarray(rows[k], dtype=np.int64))
            w[i, : lengths[k]] = 1.0
        sel = torch.from_numpy(members)
        ce, acc = vmap(one)({n: p[sel] for n, p in params.items()}, X[idx], Y[idx], w)
        ce_out[sel], acc_out[sel] = ce, acc
    return ce_out, acc_out
