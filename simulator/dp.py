"""DP-FedAvg (McMahan et al., 2018, "Learning Differentially Private Recurrent Language Models").

Per round, with clients sampled independently with probability q (Poisson
sampling, which the RDP analysis assumes) and expected cohort ``m = q N``::

    clip:       d_k <- d_k * min(1, C / ||d_k||)
    aggregate:  D = (sum_k d_k + N(0, (sigma C)^2 I)) / m

The sum has L2 sensitivity C to one client, so this is the sampled Gaussian
mechanism with noise multiplier sigma; the privacy spent after T rounds comes
from Opacus' RDP accountant (only the accountant: no model wrapping).
"""

from __future__ import annotations

import torch
from opacus.accountants import RDPAccountant


def clip_updates(deltas: torch.Tensor, clip_norm: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale each row to L2 norm at most ``clip_norm``; also return which rows were clipped."""
    norms = deltas.norm(dim=1)
    factor = torch.clamp(clip_norm / norms.clamp_min(1e-12), max=1.0)
    return deltas * factor[:, None], norms > clip_norm


def dp_aggregate(
    clipped: torch.Tensor,
    *,
    noise_multiplier: float,
    clip_norm: float,
    expected_clients: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """``(sum_k d_k + N(0, (sigma C)^2 I)) / m`` with the fixed denominator ``m = q N``."""
    total = clipped.sum(dim=0) if len(clipped) else torch.zeros(clipped.shape[1])
    noise = torch.randn(total.shape, generator=generator) * (noise_multiplier * clip_norm)
    return (total + noise) / expected_clients


class PrivacyLedger:
    """Epsilon spent so far: one accountant step per round of DP-FedAvg."""

    def __init__(self, noise_multiplier: float, sample_rate: float, delta: float) -> None:
        self.noise_multiplier = noise_multiplier
        self.sample_rate = sample_rate
        self.delta = delta
        self._accountant = RDPAccountant()

    def step(self) -> float:
        self._accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate)
        return self.epsilon()

    def epsilon(self) -> float:
        if not self._accountant.history:
            return 0.0
        return float(self._accountant.get_epsilon(delta=self.delta))


def epsilon_after(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """Epsilon of ``steps`` rounds of the sampled Gaussian mechanism (RDP accountant)."""
    acct = RDPAccountant()
    acct.history.append((noise_multiplier, sample_rate, steps))
    return float(acct.get_epsilon(delta=delta))
