"""Privacy budget: epsilon spent so far by DP-FedAvg against the run's target.

Epsilon is the one the round close reports, else Opacus' RDP accountant over
one step per round number (noise multiplier and sample rate from the run's
DP settings).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from monitor.detectors.base import (
    Detector,
    DetectorStateBase,
    FindingKind,
    RoundContext,
    RoundScore,
    Step,
    threshold,
)
from monitor.detectors.output import ActiveSignal, fmt, pct
from monitor.signals import privacy

__all__ = ["PrivacyBudget", "PrivacyBudgetThresholds", "PrivacyBudgetState"]


@dataclass(frozen=True)
class PrivacyBudgetThresholds:
    privacy_budget_warn_share: float = threshold(
        0.8, "Share of the target epsilon spent at which a warning fires (critical at 1)."
    )


@dataclass
class PrivacyBudgetState(DetectorStateBase):
    dp_steps: int = 0
    """Accountant steps taken (one per round number)."""


class PrivacyBudget(Detector):
    name = "privacy_budget"
    kinds = (
        FindingKind(
            "privacy_budget",
            "federation",
            "The run has spent most (or all) of its target epsilon.",
            "round 40: epsilon 6.52 spent of target 8.00 (82%, delta 1e-05); warning at 80%",
        ),
    )
    Thresholds = PrivacyBudgetThresholds
    State = PrivacyBudgetState
    round_scores = (
        RoundScore(
            "epsilon_accountant", "Epsilon from the RDP accountant (NaN without DP settings)."
        ),
        RoundScore("epsilon_reported", "Epsilon the round close reported, if any."),
        RoundScore(
            "epsilon_spent", "Differential-privacy epsilon spent so far.", "fl_run_privacy_epsilon"
        ),
        RoundScore(
            "privacy_budget_share",
            "Epsilon spent over the run's target epsilon.",
            "fl_run_privacy_budget_spent_ratio",
        ),
    )

    def step(self, ctx: RoundContext, state: PrivacyBudgetState) -> Step:
        cfg, th, data = ctx.cfg, ctx.th, ctx.data
        eps_acct = math.nan
        if cfg.dp_noise_multiplier is not None and cfg.dp_sample_rate is not None:
            # One accountant step per round number, not per analysed round: a round that was never
            # analysed (closed late, never closed) still spent privacy. Errs towards a higher epsilon.
            state.dp_steps = max(state.dp_steps + 1, ctx.round)
            eps_acct = privacy.dp_fedavg_epsilon(
                cfg.dp_noise_multiplier, cfg.dp_sample_rate, state.dp_steps, cfg.dp_delta or 1e-5
            )
        eps = float(data.epsilon) if data.epsilon is not None else eps_acct
        share = privacy.budget_share(eps, cfg.dp_target_epsilon) if math.isfinite(eps) else math.nan
        rs = {
            "epsilon_accountant": eps_acct,
            "epsilon_reported": math.nan if data.epsilon is None else float(data.epsilon),
            "epsilon_spent": eps,
            "privacy_budget_share": share,
        }
        active = []
        if math.isfinite(share) and share >= th.privacy_budget_warn_share:
            active.append(
                ActiveSignal(
                    kind="privacy_budget",
                    severity="critical" if share >= 1.0 else "warning",
                    client_id=None,
                    score=share,
                    threshold=th.privacy_budget_warn_share,
                    message=(
                        f"round {ctx.round}: epsilon {fmt(eps)} spent of target {fmt(cfg.dp_target_epsilon)} "
                        f"({pct(share)}, delta {cfg.dp_delta}); warning at {pct(th.privacy_budget_warn_share)}"
                    ),
                    details={
                        "epsilon": eps,
                        "target_epsilon": cfg.dp_target_epsilon,
                        "source": "reported" if data.epsilon is not None else "opacus_rdp",
                    },
                )
            )
        return Step(round_scores=rs, active=active)
