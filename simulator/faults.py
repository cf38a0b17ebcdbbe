"""The faults the simulator injects, each acting where the real failure would.

Data faults change what a client trains and evaluates on, so every statistic
downstream (histograms, losses, the update itself) comes from real training on
the faulty data:

* ``label_drift``: a share ``severity`` of the client's rows is replaced by rows
  of class ``target_class`` (default 0) drawn from the pooled data: its label
  distribution moves toward that class.
* ``covariate_shift``: features ``features`` (default: the quarter with the
  largest spread) shift by ``severity * shift * sd_f`` (``shift`` default 1).
* ``label_flip``: a share ``severity`` of training labels become ``C - 1 - y``.
* ``noisy_labels``: a share ``severity`` of training labels become uniform random.
* ``fairness_regression``: a minority cohort's population drifts slowly away from
  the majority's. With ``p_r = min(1, (r - onset + 1) / ramp_rounds) * severity``
  (``ramp_rounds`` default 10), a growing, fixed set of the cohort's rows (row i
  once ``u_i < p_r``, ``u_i ~ U(0, 1)`` drawn once) follows the cohort's own
  labelling (a fixed derangement of the classes shared by the cohort), in its
  training and held-out data alike, and all its features drift by
  ``p_r * shift * sd_f * s_f`` (``shift`` default 0.5, one random sign ``s_f``
  per feature). The majority dominates the average, so the global model keeps
  the majority's concept: the cohort is served worse while the mean improves.

Update faults act on the trained update ``d`` (the delta to the global model):

* ``stale_update``: with probability ``severity`` the client re-sends its
  previous update and statistics (handled by the simulator, which keeps them).
* ``free_rider``: ``d <- (1 - severity) d + severity * noise_std * N(0, I)``
  (``noise_std`` default 1e-4): at severity 1 a near-zero update.
* ``exploding_update``: ``d <- (1 + severity (scale - 1)) d`` (``scale`` default 100).
* ``nonfinite_update``: a share ``severity`` of the entries (at least one)
  become NaN (or +inf with ``value: inf``); the client's train loss is NaN.

Byzantine updates (attacks from the robust-aggregation literature; the client's
data, losses and histograms stay honest, only the update it sends is crafted):

* ``sign_flip``: ``d <- -severity * d`` (sign-flipping attack; Li et al., "RSA:
  Byzantine-robust stochastic aggregation methods for distributed learning from
  heterogeneous datasets", AAAI 2019; Allen-Zhu et al., ICLR 2021). At severity 1
  the update has cosine -1 to the honest one and the same norm.
* ``gaussian_noise``: ``d <- severity * ||d|| * g / ||g||``, ``g ~ N(0, I)`` (the
  Gaussian attack of Blanchard et al., "Machine learning with adversaries: Byzantine
  tolerant gradient descent", NeurIPS 2017, scaled here to the client's real update
  norm so that a norm check alone cannot see it).
* ``alie``: "a little is enough" (Baruch, Baruch and Goldberg, NeurIPS 2019). The
  colluding clients of one fault all send ``mu - z * sigma``, with ``mu`` and ``sigma``
  the per-coordinate mean and standard deviation of the round's honest updates and
  ``z = severity``: every coordinate stays within the honest spread, so per-coordinate
  robust aggregators (median, trimmed mean) keep it. The paper's
  ``z_max = Phi^-1((n - s) / n)``, ``s = floor(n / 2 + 1) - m`` (:func:`alie_z_max`)
  is 0.58 for n = 50 clients of which m = 12 collude.
* ``ipm``: inner-product manipulation (Xie, Koyejo and Gupta, "Fall of empires:
  breaking Byzantine-tolerant SGD by inner product manipulation", UAI 2020). The
  colluding clients all send ``-epsilon * mean(honest updates)``, ``epsilon = severity``
  (the paper uses 0.1 against Krum and larger values against the mean): the
  aggregate's inner product with the true direction shrinks or turns negative.

"Honest" is every client that trained this round with a finite update and is not
part of the same colluding fault; with no honest update the colluders send their own.

A federation-wide fault names no clients and hits every client at once:

* ``federation_covariate_shift``: as ``covariate_shift`` (same ``features`` and
  ``shift`` options) on every client from onset: a new feature pipeline or firmware
  everywhere. Its ground truth lists every client with ``scope: federation``.

Participation faults:

* ``dropout``: each round, with probability ``severity``, the sampled client
  silently sends nothing (and its update never reaches the server).
* ``straggler``: wall time multiplied by ``1 + severity * slowdown`` (default 10).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import norm as _normal

from simulator.scenario import COLLUDING_FAULTS, FEDERATION_FAULTS, FaultSpec, Scenario

DATA_FAULTS = (
    "label_drift",
    "covariate_shift",
    "label_flip",
    "noisy_labels",
    "fairness_regression",
    "federation_covariate_shift",
)
UPDATE_FAULTS = (
    "free_rider",
    "exploding_update",
    "nonfinite_update",
    "sign_flip",
    "gaussian_noise",
)


@dataclass(frozen=True)
class ActiveFault:
    """A fault as it applies to one client: its index in the scenario, spec and per-fault constants."""

    index: int
    spec: FaultSpec

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def severity(self) -> float:
        return self.spec.severity

    def option(self, name: str, default):
        return self.spec.options.get(name, default)


@dataclass(frozen=True)
class FaultContext:
    """What data faults need to know about the federation (all from clean training data)."""

    num_classes: int
    feature_std: np.ndarray  # [d]
    pool_X: np.ndarray
    pool_y: np.ndarray
    seed: int

    def default_shift_features(self) -> np.ndarray:
        d = len(self.feature_std)
        return np.sort(np.argsort(-self.feature_std, kind="stable")[: max(1, d // 4)])

    def cohort_permutation(self, fault_index: int) -> np.ndarray:
        """A fixed derangement of the classes (no class keeps its label)."""
        rng = np.random.default_rng([self.seed, 7002, fault_index])
        shift = int(rng.integers(1, max(2, self.num_classes)))
        return (np.arange(self.num_classes) + shift) % self.num_classes

    def cohort_signs(self, fault_index: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 7001, fault_index])
        return rng.choice(np.array([-1.0, 1.0]), size=len(self.feature_std))


class FaultPlan:
    """Which faults hit which client in which round, and the run's ground truth."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self._by_client: dict[int, list[ActiveFault]] = {}
        for i, spec in enumerate(scenario.faults):
            for k in self.fault_clients(spec):
                self._by_client.setdefault(k, []).append(ActiveFault(i, spec))

    def fault_clients(self, spec: FaultSpec) -> list[int]:
        """The client indices a fault hits: the listed ones, or all for a federation-wide fault."""
        if spec.kind in FEDERATION_FAULTS:
            return list(range(self.scenario.num_clients))
        return [self.scenario.client_index(c) for c in spec.clients]

    def active(
        self, client: int, round: int, kinds: tuple[str, ...] | None = None
    ) -> list[ActiveFault]:
        return [
            f
            for f in self._by_client.get(client, [])
            if f.spec.active(round) and (kinds is None or f.kind in kinds)
        ]

    def faulty_clients(self) -> set[int]:
        return set(self._by_client)

    def ground_truth(self) -> list[dict]:
        """One entry per (client, fault): what a detector should find, and from when.

        ``scope`` is ``federation`` for a fault that hits every client at once (one
        federation-level cause), ``client`` otherwise.
        """
        truth = []
        for i, spec in enumerate(self.scenario.faults):
            scope = "federation" if spec.kind in FEDERATION_FAULTS else "client"
            for k in self.fault_clients(spec):
                truth.append(
                    {
                        "client_id": self.scenario.client_id(k),
                        "fault": spec.kind,
                        "onset_round": spec.onset_round,
                        "end_round": spec.end_round,
                        "severity": spec.severity,
                        "options": dict(spec.options),
                        "fault_index": i,
                        "scope": scope,
                    }
                )
        return truth


def fault_rng(
    seed: int, round: int, client: int, fault_index: int, split: int = 0
) -> np.random.Generator:
    """Randomness of one fault on one client in one round, independent of everything else.

    ``split`` separates the training rows' stream (0) from the held-out rows' (1), so that the
    held-out rows a fault changes do not depend on how many training rows were drawn before
    (an evaluation with no training rows sees the same faulty held-out rows as training did).
    """
    return np.random.default_rng([seed, 7000, round, client, fault_index, split])


def apply_data_faults(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    faults: list[ActiveFault],
    *,
    round: int,
    client: int,
    ctx: FaultContext,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return faulty copies of a client's train and held-out data (inputs untouched)."""
    x_train, y_train, x_test, y_test = x_train.copy(), y_train.copy(), x_test.copy(), y_test.copy()
    for f in faults:
        rng = fault_rng(ctx.seed, round, client, f.index)
        s = f.severity
        if f.kind == "label_drift":
            target = int(f.option("target_class", 0)) % ctx.num_classes
            pool = np.flatnonzero(ctx.pool_y == target)
            for split, (x, y) in enumerate(((x_train, y_train), (x_test, y_test))):
                split_rng = fault_rng(ctx.seed, round, client, f.index, split)
                m = int(round_half_up(s * len(y)))
                if m == 0 or len(pool) == 0:
                    continue
                rows = split_rng.choice(len(y), size=m, replace=False)
                src = split_rng.choice(pool, size=m, replace=True)
                x[rows] = ctx.pool_X[src]
                y[rows] = target
        elif f.kind in ("covariate_shift", "federation_covariate_shift"):
            feats = np.asarray(f.option("features", ctx.default_shift_features()), dtype=np.int64)
            amount = (s * float(f.option("shift", 1.0)) * ctx.feature_std[feats]).astype(np.float32)
            x_train[:, feats] += amount
            x_test[:, feats] += amount
        elif f.kind == "label_flip":
            rows = rng.random(len(y_train)) < s
            y_train[rows] = ctx.num_classes - 1 - y_train[rows]
        elif f.kind == "noisy_labels":
            rows = rng.random(len(y_train)) < s
            y_train[rows] = rng.integers(0, ctx.num_classes, int(rows.sum()))
        elif f.kind == "fairness_regression":
            ramp = max(1, int(f.option("ramp_rounds", 10)))
            progress = min(1.0, (round - f.spec.onset_round + 1) / ramp) * s
            perm = ctx.cohort_permutation(f.index)
            amount = (
                progress
                * float(f.option("shift", 0.5))
                * ctx.feature_std
                * ctx.cohort_signs(f.index)
            ).astype(np.float32)
            for split, (x, y) in enumerate(((x_train, y_train), (x_test, y_test))):
                fixed = fault_rng(ctx.seed, 0, client, f.index, split)  # the same rows every round
                rows = fixed.random(len(y)) < progress
                y[rows] = perm[y[rows]]
                x += amount
    return x_train, y_train, x_test, y_test


def round_half_up(x: float) -> int:
    return int(np.floor(x + 0.5))


def apply_update_faults(
    delta: torch.Tensor, faults: list[ActiveFault], *, round: int, client: int, seed: int
) -> tuple[torch.Tensor, bool]:
    """Return the faulty update ``[P]`` and whether it was made non-finite."""
    nonfinite = False
    for f in faults:
        s = f.severity
        gen = torch.Generator().manual_seed(
            int(fault_rng(seed, round, client, f.index).integers(2**62))
        )
        if f.kind == "free_rider":
            noise = torch.randn(delta.shape, generator=gen) * float(f.option("noise_std", 1e-4))
            delta = (1.0 - s) * delta + s * noise
        elif f.kind == "exploding_update":
            delta = delta * (1.0 + s * (float(f.option("scale", 100.0)) - 1.0))
        elif f.kind == "nonfinite_update":
            count = max(1, round_half_up(s * delta.numel()))
            rows = torch.randperm(delta.numel(), generator=gen)[:count]
            delta = delta.clone()
            delta[rows] = float("inf") if f.option("value", "nan") == "inf" else float("nan")
            nonfinite = True
        elif f.kind == "sign_flip":
            delta = -s * delta
        elif f.kind == "gaussian_noise":
            noise = torch.randn(delta.shape, generator=gen)
            delta = noise * (s * delta.norm() / noise.norm().clamp_min(1e-30))
    return delta, nonfinite


def alie_z_max(n: int, m: int) -> float:
    """Baruch et al. (2019)'s largest z that keeps ``m`` of ``n`` colluders' update inside the majority.

    ``s = floor(n / 2 + 1) - m`` honest clients must be "persuaded";
    ``z_max = Phi^-1((n - s) / n)``. 0.58 for n = 50, m = 12.
    """
    s = math.floor(n / 2 + 1) - m
    return float(_normal.ppf((n - s) / n))


def colluding_groups(
    plan: FaultPlan, trainers: list[int], round: int
) -> list[tuple[ActiveFault, list[int]]]:
    """Per active colluding fault (ALIE, IPM), the positions in ``trainers`` of its clients."""
    groups: dict[int, tuple[ActiveFault, list[int]]] = {}
    for pos, k in enumerate(trainers):
        for f in plan.active(k, round, COLLUDING_FAULTS):
            groups.setdefault(f.index, (f, []))[1].append(pos)
    return [groups[i] for i in sorted(groups)]


def apply_colluding_faults(
    deltas: torch.Tensor, nonfinite: torch.Tensor, groups: list[tuple[ActiveFault, list[int]]]
) -> torch.Tensor:
    """Replace each colluding group's updates ``[K, P]`` by the one vector it crafts from the honest ones.

    Honest = finite rows outside the group, taken before any group acts (the colluders
    see the round's honest updates, not each other's crafted ones). See the module
    docstring for ALIE and IPM.
    """
    original = deltas
    deltas = deltas.clone()
    finite = ~nonfinite & torch.isfinite(original).all(dim=1)
    for f, rows in groups:
        honest = finite.clone()
        honest[rows] = False
        if not bool(honest.any()):
            continue
        h = original[honest]
        mu = h.mean(dim=0)
        if f.kind == "alie":
            sigma = h.std(dim=0, unbiased=False)
            crafted = mu - f.severity * sigma
        else:  # ipm
            crafted = -f.severity * mu
        deltas[rows] = crafted
    return deltas


def drops_out(faults: list[ActiveFault], *, round: int, client: int, seed: int) -> bool:
    """Whether a sampled client silently sends nothing this round."""
    return any(
        f.kind == "dropout" and fault_rng(seed, round, client, f.index).random() < f.severity
        for f in faults
    )


def resends_stale(faults: list[ActiveFault], *, round: int, client: int, seed: int) -> bool:
    return any(
        f.kind == "stale_update" and fault_rng(seed, round, client, f.index).random() < f.severity
        for f in faults
    )


def wall_time_factor(faults: list[ActiveFault]) -> float:
    factor = 1.0
    for f in faults:
        if f.kind == "straggler":
            factor *= 1.0 + f.severity * float(f.option("slowdown", 10.0))
    return factor
