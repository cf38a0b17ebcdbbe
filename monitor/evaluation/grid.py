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
    "CONDITIONS",
    "SEVERAL",
    "MIN_FAULT_EXAMPLES",
    "FAULTY_CLIENTS",
    "Case",
    "build_cases",
    "full_grid",
    "quick_grid",
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
    "sign_flip": 1.0,
    "gaussian_noise": 1.0,
    "alie": 1.0,
    "ipm": 0.5,
    "federation_covariate_shift": 1.0,
}
"""Severity per fault kind (simulator.faults documents each): material, not extreme.

label_drift 0.5: half the rows become one class; covariate_shift 1.0: a quarter
of the features move by 1 sd; label_flip 1.0: every training label y -> C-1-y;
noisy_labels 0.8; stale_update 0.5: re-sends the previous update in half the
rounds; free_rider 1.0: near-zero update; exploding_update 0.1: ~11x update;
nonfinite_update 0.01: 1% of the entries NaN; dropout 1.0: silent from onset;
straggler 1.0: 11x slower; fairness_regression 1.0 over a 10-round ramp;
sign_flip 1.0: the honest update negated; gaussian_noise 1.0: noise of the real
update's norm; alie 1.0: mean - 1 std of the honest updates (Baruch et al.'s
z_max is below 0.1 for 2 colluders of 20-50, which moves nothing); ipm 0.5:
-0.5 x the honest mean (Xie et al.); federation_covariate_shift 1.0: a quarter
of the features of every client move by 1 sd.
"""

SEVERAL = "several"
"""The fault of a case that injects three faults at different onsets on different clients."""

SEVERAL_FAULTS = ("label_drift", "sign_flip", "dropout")
"""What a ``several`` case injects: onsets spread over the onset range."""

CONDITIONS: dict[str, dict[str, Any]] = {
    "full": {},
    "partial-0.5-timeout": {"sample_fraction": 0.5, "missing_reports": "timeout"},
    "partial-0.3-timeout": {"sample_fraction": 0.3, "missing_reports": "timeout"},
    "partial-0.5-omit": {"sample_fraction": 0.5, "missing_reports": "omit"},
    "local-dp-histograms": {"histogram_noise": {"mechanism": "laplace", "scale": 1.0}},
    "clients-200": {"num_clients": 200},
    "clients-1000": {"num_clients": 1000},
}
"""Grid conditions: full participation (the default); partial participation with sampled
clients that do not answer reported as ``timeout`` (as a Flower server sees them) or
omitted (only who answered is reported); Laplace(1) noise on every histogram bin (local
DP); federations of 200 and 1,000 clients (Synthetic(0, 0) IID features, labels split by
Dirichlet alpha, at most 200 rows a client: digits has 1,797 rows in all)."""

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
    condition: str = "full"
    severity: float | None = None
    """None: :data:`SEVERITY` of the fault kind."""
    options: tuple[tuple[str, Any], ...] = ()
    """Further ``Scenario`` fields over the condition's, e.g. ``(("telemetry_budget",
    {"epsilon": 3}),)`` (bench/bench_privacy.py); the clients, onset and faulty clients
    stay those of the same fault, alpha and seed."""
    tag: str = ""
    """Appended to the run id (cases that differ only in ``severity``/``options``)."""

    @property
    def run_id(self) -> str:
        tail = "" if self.condition == "full" else f"-{self.condition}"
        tail += f"-{self.tag}" if self.tag else ""
        return f"{self.fault or 'healthy'}-a{self.alpha:g}-s{self.seed}{tail}"


def build_cases(
    kinds: Sequence[str],
    alphas: Sequence[float],
    seeds: Sequence[int],
    *,
    rounds: int,
    clients: tuple[int, int],
    onset: tuple[int, int],
    healthy: bool = True,
    condition: str = "full",
) -> list[Case]:
    faults: list[str | None] = list(kinds) + ([None] if healthy else [])
    return [
        Case(f, a, s, rounds, clients, onset, condition)
        for f in faults
        for a in alphas
        for s in seeds
    ]


def _base_scenario(case: Case, rng: np.random.Generator) -> Any:
    from simulator.scenario import Scenario

    cond = dict(CONDITIONS[case.condition])
    big = "num_clients" in cond
    num_clients = int(cond.pop("num_clients", rng.integers(case.clients[0], case.clients[1] + 1)))
    data: dict[str, Any] = {
        "run_id": case.run_id,
        "name": f"evaluate {case.run_id}",
        "dataset": "digits",
        "partition": "dirichlet",
        "alpha": case.alpha,
        "num_clients": num_clients,
        "rounds": case.rounds,
        "model": "logreg",
        "seed": case.seed,
        "centralized_baseline": False,
        "engine": "batched",
        **cond,
        **dict(case.options),
    }
    if big:
        data.update(
            dataset="synthetic",
            synthetic_alpha=0.0,
            synthetic_beta=0.0,
            synthetic_iid=True,
            synthetic_max_examples=200,
        )
    return Scenario.model_validate(data)


def _fault_specs(case: Case, kind: str, chosen: list[int], onset: int, fed: Any) -> list[Any]:
    from simulator.scenario import FEDERATION_FAULTS, FaultSpec

    severity = SEVERITY[kind] if case.severity is None else case.severity
    if kind in FEDERATION_FAULTS:
        return [FaultSpec(kind=kind, onset_round=onset, severity=severity)]
    if kind == "label_drift":
        num_classes = fed.dataset.num_classes
        return [
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
    return [FaultSpec(kind=kind, clients=chosen, onset_round=onset, severity=severity)]


def make_scenario(case: Case) -> Any:
    """The simulator scenario of a case (faults placed on eligible clients, see the module docstring)."""
    from simulator.scenario import FAULT_KINDS
    from simulator.simulation import build_federation

    if case.fault == SEVERAL:
        kind_index = len(FAULT_KINDS) + 1
    else:
        kind_index = FAULT_KINDS.index(case.fault) + 1 if case.fault else 0
    rng = np.random.default_rng([case.seed, kind_index, int(round(case.alpha * 1000)), 9100])
    base = _base_scenario(case, rng)
    onset = int(rng.integers(case.onset[0], case.onset[1] + 1))
    if case.fault is None:
        return base
    fed = build_federation(base)
    sizes = np.array([len(y) for y in fed.y_train])
    eligible = np.flatnonzero(sizes >= MIN_FAULT_EXAMPLES)
    if eligible.size == 0:
        eligible = np.arange(base.num_clients)
    kinds = list(SEVERAL_FAULTS) if case.fault == SEVERAL else [case.fault]
    per_kind = [
        max(3, int(math.ceil(0.1 * base.num_clients)))
        if k == "fairness_regression"
        else FAULTY_CLIENTS
        for k in kinds
    ]
    picked = [
        int(c) for c in rng.choice(eligible, size=min(sum(per_kind), eligible.size), replace=False)
    ]
    lo, hi = case.onset
    faults = []
    for j, k in enumerate(kinds):
        chosen = sorted(picked[sum(per_kind[:j]) : sum(per_kind[: j + 1])])
        if not chosen:
            continue
        # several faults: onsets spread evenly over the onset range, in the order listed
        at = onset if len(kinds) == 1 else lo + round(j * (hi - lo) / max(1, len(kinds) - 1))
        faults += _fault_specs(case, k, chosen, at, fed)
    return base.model_copy(update={"faults": faults})


TUNED_SEEDS = (0, 1, 2)
HELD_OUT_SEEDS = (3, 4)
"""The full grid's seeds: detectors were tuned on the first, checked on the second."""


def full_grid(kinds: Sequence[str], *, held_out: bool = True) -> tuple[list[Case], list[Case]]:
    """The full benchmark (about 22 min with ``--jobs 2`` on a 2-core VM): (tuned cases, held-out cases).

    * every kind, ``several`` and healthy x alpha {0.1, 0.5, 100} x seeds :data:`TUNED_SEEDS`,
      full participation, 20-50 clients;
    * the same kinds at alpha 0.5, seed 0, under partial participation (0.5 and 0.3 with
      timeouts, 0.5 reporting only who answered) and local-DP histograms;
    * 200 clients: healthy at alpha {0.1, 0.5, 100}, and at alpha 0.5 a sign flip, a label
      drift, a dropout and a federation-wide shift; 1,000 clients: healthy at alpha
      {0.1, 0.5, 100}, a sign flip and a federation-wide shift (the calibration of the
      federation-level thresholds over size and skew needs the healthy runs);
    * held out: the first block again with seeds :data:`HELD_OUT_SEEDS`, and the healthy
      200- and 1,000-client runs with the first of them.
    """
    every = [*kinds, SEVERAL]
    common = {"rounds": 30, "clients": (20, 50), "onset": (8, 15)}
    tuned = build_cases(every, [0.1, 0.5, 100], TUNED_SEEDS, **common)
    for cond in (
        "partial-0.5-timeout",
        "partial-0.3-timeout",
        "partial-0.5-omit",
        "local-dp-histograms",
    ):
        tuned += build_cases(every, [0.5], [0], condition=cond, **common)
    for size, kinds_at_size in (
        ("clients-200", ["sign_flip", "label_drift", "dropout", "federation_covariate_shift"]),
        ("clients-1000", ["sign_flip", "federation_covariate_shift"]),
    ):
        tuned += build_cases([], [0.1, 0.5, 100], [0], condition=size, **common)
        tuned += build_cases(
            [k for k in kinds_at_size if k in kinds],
            [0.5],
            [0],
            healthy=False,
            condition=size,
            **common,
        )
    held: list[Case] = []
    if held_out:
        held = build_cases(every, [0.1, 0.5, 100], HELD_OUT_SEEDS, **common)
        for size in ("clients-200", "clients-1000"):
            held += build_cases([], [0.1, 0.5, 100], HELD_OUT_SEEDS[:1], condition=size, **common)
    return tuned, held


def quick_grid(kinds: Sequence[str]) -> list[Case]:
    """The CI grid (about a minute): every kind once, several faults, healthy; and dropout and
    healthy under half participation with timeouts. Alpha 0.5, seed 0, 20-25 clients, 20 rounds."""
    common = {"rounds": 20, "clients": (20, 25), "onset": (8, 10)}
    cases = build_cases([*kinds, SEVERAL], [0.5], [0], **common)
    cases += build_cases(["dropout"], [0.5], [0], condition="partial-0.5-timeout", **common)
    return cases
