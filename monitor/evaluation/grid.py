"""The detection benchmark's grid: which runs, and the simulator scenario of each.

Every fault kind of the simulator x Dirichlet alpha x seed, plus healthy runs,
all drawn from the seed, so a run is reproducible:

* ``num_clients`` uniform in ``clients`` (20..50), onset uniform in
  ``onset`` (8..15), ``rounds`` 30, full participation;
* the faulty clients: 2 per run (a cohort of max(3, 10%) for
  ``fairness_regression``), drawn among clients with at least
  :data:`MIN_FAULT_EXAMPLES` training rows;
* severities :data:`SEVERITY`; ``label_drift`` moves each faulty client toward
  the class it holds least of (a drift toward a class it is already made of
  would not be a change).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "SEVERITY",
    "MIN_FAULT_EXAMPLES",
    "FAULTY_CLIENTS",
    "Case",
    "build_cases",
    "make_scenario",
]

SEVERITY: dict[str, float] = {
    "label_drift": 0.5,
    "covariate_shift": 1.0,
    "label_flip": 1.0,
    "noisy_labels": 0.8,
    "stale_update": 0.5,
    "free_rider": 1.0,
    "exploding_update": 0.1,
    "nonfinite_update": 0.01,
    "dropout": 1.0,
    "straggler": 1.0,
    "fairness_regression": 1.0,
}
"""Severity per fault kind (simulator.faults documents each): material, not extreme.

label_drift 0.5: half the rows become one class; covariate_shift 1.0: a quarter
of the features move by 1 sd; label_flip 1.0: every training label y -> C-1-y;
noisy_labels 0.8; stale_update 0.5: re-sends the previous update in half the
rounds; free_rider 1.0: near-zero update; exploding_update 0.1: ~11x update;
nonfinite_update 0.01: 1% of the entries NaN; dropout 1.0: silent from onset;
straggler 1.0: 11x slower; fairness_regression 1.0 over a 10-round ramp.
"""

MIN_FAULT_EXAMPLES = 20
FAULTY_CLIENTS = 2


@dataclass(frozen=True)
class Case:
    """One run of the grid: a fault kind (None = healthy), alpha and seed; the rest is drawn from them."""

    fault: str | None
    alpha: float
    seed: int
    rounds: int
    clients: tuple[int, int]
    onset: tuple[int, int]

    @property
    def run_id(self) -> str:
        return f"{self.fault or 'healthy'}-a{self.alpha:g}-s{self.seed}"


def build_cases(
    kinds: Sequence[str],
    alphas: Sequence[float],
    seeds: Sequence[int],
    *,
    rounds: int,
    clients: tuple[int, int],
    onset: tuple[int, int],
    healthy: bool = True,
) -> list[Case]:
    faults: list[str | None] = list(kinds) + ([None] if healthy else [])
    return [Case(f, a, s, rounds, clients, onset) for f in faults for a in alphas for s in seeds]


def make_scenario(case: Case) -> Any:
    """The simulator scenario of a case (faults placed on eligible clients, see the module docstring)."""
    from simulator.scenario import FAULT_KINDS, FaultSpec, Scenario
    from simulator.simulation import build_federation

    kind_index = FAULT_KINDS.index(case.fault) + 1 if case.fault else 0
    rng = np.random.default_rng([case.seed, kind_index, int(round(case.alpha * 1000)), 9100])
    num_clients = int(rng.integers(case.clients[0], case.clients[1] + 1))
    onset = int(rng.integers(case.onset[0], case.onset[1] + 1))
    base = Scenario(
        run_id=case.run_id,
        name=f"evaluate {case.run_id}",
        dataset="digits",
        partition="dirichlet",
        alpha=case.alpha,
        num_clients=num_clients,
        rounds=case.rounds,
        model="logreg",
        seed=case.seed,
        centralized_baseline=False,
        engine="batched",
    )
    if case.fault is None:
        return base
    fed = build_federation(base)
    sizes = np.array([len(y) for y in fed.y_train])
    eligible = np.flatnonzero(sizes >= MIN_FAULT_EXAMPLES)
    if eligible.size == 0:
        eligible = np.arange(num_clients)
    count = (
        max(3, int(math.ceil(0.1 * num_clients)))
        if case.fault == "fairness_regression"
        else FAULTY_CLIENTS
    )
    chosen = sorted(
        int(c) for c in rng.choice(eligible, size=min(count, eligible.size), replace=False)
    )
    severity = SEVERITY[case.fault]
    if case.fault == "label_drift":
        num_classes = fed.dataset.num_classes
        faults = [
            FaultSpec(
                kind="label_drift",
                clients=[c],
                onset_round=onset,
                severity=severity,
                options={
                    "target_class": int(
                        np.argmin(np.bincount(fed.y_train[c], minlength=num_classes))
                    )
                },
            )
            for c in chosen
        ]
    else:
        faults = [FaultSpec(kind=case.fault, clients=chosen, onset_round=onset, severity=severity)]
    return base.model_copy(update={"faults": faults})
