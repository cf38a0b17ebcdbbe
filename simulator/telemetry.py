"""Simulated clients under a telemetry budget: the release schedule and noise of collectors/privacy.py, batched.

Every client follows the Flower mod's rules (:func:`collectors.privacy.privatize_report`):
``ceil(rounds / k)`` releases at least ``k`` rounds apart, Gaussian noise with
``sigma = z sqrt(2H)`` on every bin of its ``H`` histograms (``H = 1 + F``
with feature histograms, 1 with labels only), no histograms between releases
or after the last one. The noise stream is the simulator's (seeded per round),
drawn for every client, so one client's noise does not depend on who trains.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from collectors.privacy import NoisePlan
from simulator.scenario import Scenario


class TelemetryReleases:
    def __init__(self, scenario: Scenario, num_clients: int, num_features: int) -> None:
        tb = scenario.telemetry_budget
        assert tb is not None
        self.plan = NoisePlan.from_budget(
            {
                "epsilon": tb.epsilon,
                "delta": tb.delta,
                "planned_rounds": scenario.rounds,
                "every_k_rounds": tb.every_k_rounds,
            }
        )
        self.num_histograms = {"all": 1 + num_features, "labels": 1, "none": 0}[scenario.histograms]
        self.done = np.zeros(num_clients, dtype=np.int64)
        self.last = np.full(num_clients, -(10**9), dtype=np.int64)

    @property
    def sigma(self) -> float:
        return self.plan.sigma(self.num_histograms) if self.num_histograms else 0.0

    def release(self, clients: list[int], server_round: int) -> np.ndarray:
        """Which of ``clients`` release histograms this round (and count the release)."""
        k = np.asarray(clients, dtype=np.int64)
        if self.num_histograms == 0 or not len(k):
            return np.zeros(len(k), dtype=bool)
        ok = (self.done[k] < self.plan.releases_planned) & (
            server_round - self.last[k] >= self.plan.every_k_rounds
        )
        self.done[k[ok]] += 1
        self.last[k[ok]] = server_round
        return ok

    def noise(
        self,
        lab: np.ndarray,
        feat: np.ndarray,
        clients: list[int],
        rng: np.random.Generator,
        total: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Histograms plus noise; ``rng`` is the round's histogram-noise stream, drawn for all ``total`` clients."""
        sigma = self.sigma
        lab_noise = rng.normal(0.0, sigma, (total, *lab.shape[1:]))
        feat_noise = rng.normal(0.0, sigma, (total, *feat.shape[1:]))
        return lab + lab_noise[clients], feat + feat_noise[clients]

    def declaration(self, client: int) -> dict[str, Any]:
        return self.plan.declaration(self.num_histograms, int(self.done[client]))
