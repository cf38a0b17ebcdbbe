"""What a client computes on its raw data, and the noise its telemetry budget adds.

The one list (docs/privacy.md explains what the service can infer from each).
Computed by the Flower mod (:mod:`collectors.flower.mod`) on the client, by the
simulator for its simulated clients, or by the user's own code before
:meth:`collectors.MonitorClient.report`:

* ``label_histogram``: count of training rows per class.
  **Noised** under a telemetry budget.
* ``feature_histograms``: count of training rows per shared bin, per feature
  (out-of-range values in the outer bins). **Noised** under a telemetry budget.
* ``num_examples``: number of training rows. Sent as is: it is the same for
  neighbouring datasets (one record replaced), and FedAvg sends it anyway.
* ``eval_loss``, ``eval_accuracy``: the received global model on the client's
  held-out rows. Not noised.
* ``eval_examples``: number of held-out rows behind ``eval_accuracy`` (optional; the
  fairness signal allows for the sampling noise of small evaluation sets). Sent as
  is, like ``num_examples``.
* ``train_loss``, ``train_accuracy``: the user's train step's own metrics. Not noised.
* ``wall_time_seconds``: the train step's duration. Not noised.
* ``update_norm``: ``||w_local - w_global||``. Not noised.
* ``update_cosine_previous_global`` (secure aggregation only): cosine of the
  update to the previous global update, i.e. the difference of the last two
  global models the client received. Not noised.
* ``update_repeated`` (secure aggregation only): the update repeats the
  client's previous update (cosine >= 1 - 1e-6 and norm within 1e-6
  relative). Not noised.

Without secure aggregation the server (not the client) sketches each update
(a fixed-seed random projection, :mod:`collectors.flower.sketch`).

The budget covers the histograms only: they describe the data itself and
repeat every round. The other numbers are functions of the model, which the
FL server receives anyway (DP-FedAvg protects those, see docs/privacy.md).

A :class:`TelemetryBudget` ``(epsilon, delta, planned_rounds, every_k_rounds)``
becomes a :class:`NoisePlan`: ``T = ceil(planned_rounds / k)`` releases, a
noise multiplier ``z`` calibrated so that the ``T``-fold composition spends at
most ``epsilon`` at ``delta`` (:mod:`monitor.signals.telemetry_privacy`), and
per release i.i.d. ``N(0, (z sqrt(2H))^2)`` on every bin of the ``H``
histograms sent. Rounds that are not releases send no histograms; after ``T``
releases the client stops sending them, so the budget holds however long the
run lasts. Each noised report declares ``histogram_noise`` (mechanism, sigma,
sensitivity, budget, release number), which the service uses for its drift
thresholds and its own accounting.

Noise comes from ``numpy.random.default_rng()`` seeded by the operating
system; a fixed ``seed`` is for tests only (anyone knowing it can subtract the
noise).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from monitor.schemas import TelemetryBudget
from monitor.signals.telemetry_privacy import (
    calibrate_noise_multiplier,
    histogram_l2_sensitivity,
    is_release_round,
    planned_releases,
)

log = logging.getLogger("fedsentinel.privacy")

__all__ = ["NoisePlan", "ReleaseState", "TelemetryBudget", "TelemetryNoiser", "privatize_report"]


@dataclass(frozen=True)
class NoisePlan:
    """A telemetry budget turned into a release schedule and a noise multiplier."""

    epsilon: float
    delta: float
    every_k_rounds: int
    releases_planned: int
    noise_multiplier: float

    @classmethod
    def from_budget(cls, budget: TelemetryBudget | dict[str, Any]) -> NoisePlan:
        b = (
            budget
            if isinstance(budget, TelemetryBudget)
            else TelemetryBudget.model_validate(budget)
        )
        if b.planned_rounds is None:
            raise ValueError(
                "a client's telemetry budget needs planned_rounds (the releases it is spread over)"
            )
        releases = planned_releases(b.planned_rounds, b.every_k_rounds)
        z = calibrate_noise_multiplier(b.epsilon, b.delta, releases)
        return cls(b.epsilon, b.delta, b.every_k_rounds, releases, z)

    def sigma(self, num_histograms: int) -> float:
        """Per-bin noise standard deviation, in counts, for a release of ``H`` histograms."""
        return self.noise_multiplier * histogram_l2_sensitivity(num_histograms)

    def declaration(self, num_histograms: int, release: int) -> dict[str, Any]:
        """The report's ``histogram_noise`` for release number ``release`` (1-based)."""
        return {
            "mechanism": "gaussian",
            "scale": self.sigma(num_histograms),
            "l2_sensitivity": histogram_l2_sensitivity(num_histograms),
            "epsilon": self.epsilon,
            "delta": self.delta,
            "releases_planned": self.releases_planned,
            "release": release,
        }


@dataclass
class ReleaseState:
    """What a client remembers between rounds: releases made and the round of the last one."""

    releases_done: int = 0
    last_release_round: int | None = None


def privatize_report(
    report: dict[str, Any],
    plan: NoisePlan,
    state: ReleaseState,
    server_round: int,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """Noise (or, outside a release round, drop) a report's histograms; update ``state``.

    ``report`` is a ``ClientReport`` dict; a copy is returned. A report that
    already declares ``histogram_noise`` (noised by the caller) is returned as
    it is.
    """
    out = dict(report)
    if out.get("histogram_noise") is not None:
        return out
    labels = out.get("label_histogram")
    features = out.get("feature_histograms") or []
    num_histograms = (labels is not None) + len(features)
    if num_histograms == 0:
        return out
    if not is_release_round(
        server_round,
        state.last_release_round,
        state.releases_done,
        plan.releases_planned,
        plan.every_k_rounds,
    ):
        out.pop("label_histogram", None)
        out.pop("feature_histograms", None)
        return out
    sigma = plan.sigma(num_histograms)
    if labels is not None:
        lab = np.asarray(labels, dtype=np.float64)
        out["label_histogram"] = (lab + rng.normal(0.0, sigma, lab.shape)).tolist()
    if features:
        out["feature_histograms"] = [
            (np.asarray(h, dtype=np.float64) + rng.normal(0.0, sigma, len(h))).tolist()
            for h in features
        ]
    state.releases_done += 1
    state.last_release_round = server_round
    out["histogram_noise"] = plan.declaration(num_histograms, state.releases_done)
    return out


class TelemetryNoiser:
    """Per-client release state plus one plan: what :class:`~collectors.MonitorClient` uses.

    ``noise(run_id, round, reports)`` privatizes each report of a round, keeping
    each client's release count. In a real deployment the noise belongs on the
    client (the Flower mod does it there); this is for FL code that reports
    on behalf of clients it runs itself, and for simulations.
    """

    def __init__(
        self, budget: TelemetryBudget | dict[str, Any], *, seed: int | None = None
    ) -> None:
        self.plan = NoisePlan.from_budget(budget)
        self._rng = np.random.default_rng(seed)
        self._states: dict[tuple[str, str], ReleaseState] = {}
        if seed is not None:
            log.warning(
                "telemetry noise seeded with %s: for tests only, it can be subtracted", seed
            )

    def noise(
        self, run_id: str, server_round: int, reports: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        out = []
        for report in reports:
            if report.get("status", "ok") != "ok":
                out.append(report)
                continue
            state = self._states.setdefault((run_id, str(report["client_id"])), ReleaseState())
            out.append(privatize_report(report, self.plan, state, server_round, self._rng))
        return out

    def releases(self, run_id: str, client_id: str) -> int:
        state = self._states.get((run_id, client_id))
        return 0 if state is None else state.releases_done
