"""Privacy budget of DP-FedAvg, from Opacus' RDP accountant."""

from __future__ import annotations

import math
from functools import lru_cache

__all__ = ["dp_fedavg_epsilon", "budget_share"]


@lru_cache(maxsize=4096)
def dp_fedavg_epsilon(
    noise_multiplier: float, sample_rate: float, steps: int, delta: float
) -> float:
    r"""Epsilon spent after ``steps`` rounds of DP-FedAvg (user-level, Poisson client sampling).

    Each round is one application of the sampled Gaussian mechanism with
    sampling rate ``q`` (fraction of clients sampled) and noise multiplier
    ``sigma`` (noise std / clip norm). Renyi-DP composes additively over
    rounds and is converted to ``(epsilon, delta)``-DP by Opacus'
    ``RDPAccountant`` (its default orders), exactly as
    ``for _ in range(steps): acct.step(noise_multiplier=sigma, sample_rate=q)``
    followed by ``acct.get_epsilon(delta)``, in O(1) instead of O(steps).

    Returns 0 for no steps and ``inf`` for ``sigma == 0``.

    References: Mironov, "Renyi differential privacy", CSF 2017; Mironov, Talwar
    & Zhang, "Renyi DP of the sampled Gaussian mechanism", 2019; McMahan et al.,
    "Learning differentially private recurrent language models", ICLR 2018.
    """
    if steps <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    from opacus.accountants import RDPAccountant  # heavy import (torch), only when DP is on

    acct = RDPAccountant()
    acct.history = [(float(noise_multiplier), float(sample_rate), int(steps))]
    return float(acct.get_epsilon(delta=delta))


def budget_share(epsilon: float, target_epsilon: float | None) -> float:
    """``epsilon / target_epsilon``; NaN without a target."""
    if target_epsilon is None or not target_epsilon > 0 or epsilon is None:
        return math.nan
    return float(epsilon / target_epsilon)
