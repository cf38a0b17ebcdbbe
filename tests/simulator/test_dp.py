"""DP-FedAvg pieces: clipping, the noisy aggregate, and epsilon from Opacus' RDP accountant."""

from __future__ import annotations

import pytest
import torch
from opacus.accountants import RDPAccountant

from simulator.dp import PrivacyLedger, clip_updates, dp_aggregate, epsilon_after


@pytest.mark.parametrize(
    ("q", "sigma", "steps", "expected"),
    [(0.1, 1.0, 10, 3.441), (0.1, 1.0, 100, 7.899), (0.01, 1.0, 1000, 2.101)],
)
def test_epsilon_matches_reference_values(
    q: float, sigma: float, steps: int, expected: float
) -> None:
    """Reference values from FACTS.md (Opacus RDP accountant, delta = 1e-5)."""
    assert epsilon_after(sigma, q, steps, 1e-5) == pytest.approx(expected, abs=1e-3)


def test_ledger_steps_like_the_accountant() -> None:
    ledger = PrivacyLedger(noise_multiplier=1.1, sample_rate=0.05, delta=1e-6)
    acct = RDPAccountant()
    assert ledger.epsilon() == 0.0
    for _ in range(25):
        eps = ledger.step()
        acct.step(noise_multiplier=1.1, sample_rate=0.05)
        assert eps == pytest.approx(acct.get_epsilon(delta=1e-6), rel=1e-12)
    assert eps == pytest.approx(epsilon_after(1.1, 0.05, 25, 1e-6), rel=1e-12)


def test_clipping_bounds_every_row() -> None:
    d = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
    clipped, was = clip_updates(d, 1.0)
    assert was.tolist() == [True, False, False]
    torch.testing.assert_close(clipped[0], torch.tensor([0.6, 0.8]))
    torch.testing.assert_close(clipped[1:], d[1:])


def test_aggregate_noise_has_std_sigma_c_over_m() -> None:
    zero = torch.zeros(4, 200_000)
    gen = torch.Generator().manual_seed(0)
    out = dp_aggregate(
        zero, noise_multiplier=2.0, clip_norm=0.5, expected_clients=4.0, generator=gen
    )
    assert out.mean().item() == pytest.approx(0.0, abs=0.01)
    assert out.std().item() == pytest.approx(2.0 * 0.5 / 4.0, rel=0.01)
    ones = torch.ones(4, 3)
    exact = dp_aggregate(
        ones, noise_multiplier=0.0, clip_norm=1.0, expected_clients=8.0, generator=gen
    )
    torch.testing.assert_close(exact, torch.full((3,), 0.5))
