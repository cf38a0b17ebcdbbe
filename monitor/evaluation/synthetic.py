"""Synthetic federated rounds with known faults, for tests, benchmarks and docs.

Not a simulator (that is ``simulator/``, which trains real models): this draws
the statistics a round would report straight from a parametric model, fast
enough for 10,000 clients, so every detector can be checked where it must fire
and where it must stay quiet.

Healthy model, per client ``i`` (fixed for the run) and round ``t``:

* labels ``~ Multinomial(N_i, p_i)``, ``p_i ~ Dirichlet(alpha 1)`` (non-IID);
* feature ``f`` ``~ Normal(mu_if, 1)`` with ``mu_if ~ Normal(0, 0.5)``, binned on
  shared edges ``linspace(-4, 4, bins + 1)`` (mass outside goes to the end bins);
* eval loss ``= b_i g(t) exp(0.08 eps)``, ``g(t) = 0.5 + 1.5 e^{-t/10}``;
* sketch ``= u_t + 0.8 z_i / sqrt(D)``-scaled noise, with ``u_t`` the round's
  common direction; the aggregate is the mean sketch;
* wall time ``= w_i exp(0.15 eps)``.

A :class:`Fault` changes chosen clients from a start round on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import norm as _norm

from monitor.schemas import DPConfig, RunCreate, TaskSpec

__all__ = ["FAULT_KINDS", "Fault", "SyntheticFederation"]

FAULT_KINDS = (
    "label_shift",
    "feature_shift",
    "loss_jump",
    "label_noise",
    "sign_flip",
    "norm_scale",
    "stale",
    "free_rider",
    "nonfinite",
    "dropout",
    "missing",
    "straggler",
    "accuracy_drop",
)


@dataclass
class Fault:
    kind: str
    clients: Sequence[int]
    start: int
    end: int | None = None
    magnitude: float = 1.0

    def on(self, t: int) -> bool:
        return t >= self.start and (self.end is None or t < self.end)


@dataclass
class SyntheticFederation:
    n_clients: int
    num_classes: int = 10
    n_features: int = 3
    bins: int = 10
    sketch_dim: int = 32
    alpha: float = 0.5
    examples: tuple[int, int] = (150, 600)
    seed: int = 0
    noise: tuple[str, float] | None = None
    faults: list[Fault] = field(default_factory=list)
    dp: DPConfig | None = None
    centralized_accuracy: float | None = None

    def __post_init__(self) -> None:
        rng = np.random.default_rng([self.seed, 999_999])
        n, c = self.n_clients, self.num_classes
        self.client_ids = [f"c{i:05d}" for i in range(n)]
        self.p = rng.dirichlet(np.full(c, self.alpha), size=n)
        self.p = np.clip(self.p, 0, None)
        self.p /= self.p.sum(axis=1, keepdims=True)
        self.n_examples = rng.integers(self.examples[0], self.examples[1] + 1, size=n)
        self.mu = rng.normal(0.0, 0.5, size=(n, self.n_features))
        self.loss_base = rng.uniform(0.6, 1.6, size=n)
        self.acc_base = rng.uniform(0.6, 0.9, size=n)
        self.wall_base = rng.uniform(5.0, 15.0, size=n)
        self.edges = np.linspace(-4.0, 4.0, self.bins + 1)

    def run(
        self, run_id: str = "synthetic", thresholds: dict[str, float] | None = None
    ) -> RunCreate:
        return RunCreate(
            run_id=run_id,
            task=TaskSpec(
                num_classes=self.num_classes,
                feature_names=[f"x{f}" for f in range(self.n_features)],
            ),
            feature_bin_edges=[self.edges.tolist() for _ in range(self.n_features)],
            sketch_dim=self.sketch_dim,
            expected_clients=self.n_clients,
            dp=self.dp,
            centralized_accuracy=self.centralized_accuracy,
            thresholds=thresholds or {},
        )

    def _active(self, kind: str, t: int) -> list[Fault]:
        return [f for f in self.faults if f.kind == kind and f.on(t)]

    def _sketches(self, t: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, t, 1])
        d = self.sketch_dim
        u = rng.normal(size=d)
        u /= np.linalg.norm(u)
        z = rng.normal(size=(self.n_clients, d)) / np.sqrt(d)
        scale = np.exp(0.1 * rng.normal(size=self.n_clients))
        return (u + 0.8 * z) * scale[:, None]

    def round(self, t: int):
        """The :class:`monitor.detectors.RoundInput` of round ``t`` (deterministic in ``seed`` and ``t``)."""
        from monitor.detectors import RoundInput

        rng = np.random.default_rng([self.seed, t, 0])
        n = self.n_clients
        d = RoundInput.empty(t, self.client_ids, self.run())
        nex = self.n_examples.copy()
        d.num_examples[:] = nex

        p = self.p.copy()
        for f in self._active("label_shift", t):
            for i in f.clients:
                k = int(np.argmin(self.p[i]))
                p[i] = (1 - f.magnitude) * self.p[i]
                p[i, k] += f.magnitude
        d.label_hist[:] = rng.multinomial(nex, p).astype(np.float64)

        mu = self.mu.copy()
        for f in self._active("feature_shift", t):
            mu[list(f.clients), 0] += f.magnitude
        inner = self.edges[1:-1]
        for j in range(self.n_features):
            cdf = _norm.cdf(inner[None, :] - mu[:, j : j + 1])
            cdf = np.concatenate([np.zeros((n, 1)), cdf, np.ones((n, 1))], axis=1)
            probs = np.clip(np.diff(cdf, axis=1), 0, None)
            probs /= probs.sum(axis=1, keepdims=True)
            d.feature_hists[j][:] = rng.multinomial(nex, probs).astype(np.float64)

        if self.noise is not None:
            mech, scale = self.noise
            draw = rng.laplace if mech == "laplace" else rng.normal
            d.label_hist += draw(0.0, scale, size=d.label_hist.shape)
            for j in range(self.n_features):
                d.feature_hists[j] += draw(0.0, scale, size=d.feature_hists[j].shape)
            d.noise_mechanism[:] = mech
            d.noise_scale[:] = scale

        g = 0.5 + 1.5 * np.exp(-t / 10.0)
        d.eval_loss[:] = self.loss_base * g * np.exp(0.08 * rng.normal(size=n))
        d.train_loss[:] = d.eval_loss * 0.9
        for f in self._active("label_noise", t):
            # trained on corrupted labels: the training loss rises, the held-out loss does not
            d.train_loss[list(f.clients)] *= np.exp(f.magnitude)
        acc = np.clip(
            self.acc_base * (1 - 0.5 * np.exp(-t / 10.0)) + 0.01 * rng.normal(size=n), 0, 1
        )
        for f in self._active("loss_jump", t):
            d.eval_loss[list(f.clients)] *= np.exp(f.magnitude)
            acc[list(f.clients)] = np.clip(acc[list(f.clients)] - 0.3, 0, 1)
        for f in self._active("accuracy_drop", t):
            # worst clients lose `magnitude` per round since start, others gain the same
            k = t - f.start + 1
            mask = np.zeros(n, dtype=bool)
            mask[list(f.clients)] = True
            acc = np.where(mask, acc - f.magnitude * k, acc + f.magnitude * k * 0.5)
            acc = np.clip(acc, 0, 1)
        d.eval_accuracy[:] = acc
        d.train_accuracy[:] = np.clip(acc + 0.02, 0, 1)

        d.wall_time_seconds[:] = self.wall_base * np.exp(0.15 * rng.normal(size=n))
        for f in self._active("straggler", t):
            d.wall_time_seconds[list(f.clients)] *= f.magnitude

        sk = self._sketches(t)
        for f in self._active("sign_flip", t):
            sk[list(f.clients)] *= -1.0
        for f in self._active("norm_scale", t):
            sk[list(f.clients)] *= f.magnitude
        for f in self._active("stale", t):
            prev = self._sketches(f.start - 1)
            sk[list(f.clients)] = prev[list(f.clients)]
        for f in self._active("free_rider", t):
            sk[list(f.clients)] *= 1e-4
        d.sketch[:] = sk
        d.update_norm[:] = np.linalg.norm(sk, axis=1)
        for f in self._active("nonfinite", t):
            for i in f.clients:
                d.sketch[i, 0] = np.nan
                d.update_norm[i] = np.inf
                d.nonfinite_update[i] = True

        d.clipped[:] = 0.0
        d.global_eval_loss = float(np.median(d.eval_loss))
        d.global_eval_accuracy = float(np.mean(acc))
        for f in self._active("dropout", t):
            for i in f.clients:
                d.status[i] = "dropped"
                for name in (
                    "eval_loss",
                    "eval_accuracy",
                    "train_loss",
                    "train_accuracy",
                    "update_norm",
                    "wall_time_seconds",
                ):
                    getattr(d, name)[i] = np.nan
                d.sketch[i] = np.nan
                d.label_hist[i] = np.nan
                for h in d.feature_hists:
                    h[i] = np.nan
        ok = d.status == "ok"
        good = ok & np.isfinite(d.sketch).all(axis=1)
        d.aggregate_sketch = d.sketch[good].mean(axis=0) if good.any() else None
        d.aggregate_update_norm = float(np.linalg.norm(d.aggregate_sketch)) if good.any() else None
        d.num_sampled = n
        missing = sorted({i for f in self._active("missing", t) for i in f.clients})
        if missing:
            keep = np.setdiff1d(np.arange(n), missing)
            d = _subset(d, keep)
            d.num_sampled = n
        return d


def _subset(d, keep: np.ndarray):
    from monitor.detectors import RoundInput

    kw = {}
    for name, v in vars(d).items():
        if name == "client_ids":
            kw[name] = [v[i] for i in keep]
        elif name == "feature_hists":
            kw[name] = [h[keep] for h in v]
        elif isinstance(v, np.ndarray) and name != "aggregate_sketch":
            kw[name] = v[keep]
        else:
            kw[name] = v
    return RoundInput(**kw)
