r"""The privacy of the telemetry itself: sensitivity, noise calibration and accounting.

The monitor asks each client, round after round, for its label histogram and
its feature histograms. A client that sets a *telemetry budget*
``(epsilon, delta)`` for the run adds Gaussian noise to them, calibrated here;
the service accounts what each client has spent, also here, with the same
accountant. This module is the one place for that math; it is pure (numbers
in, numbers out) and is imported by both sides (:mod:`collectors.privacy`
noises, :mod:`monitor.detectors` accounts). docs/privacy.md explains it for
people.

Neighbouring datasets and sensitivity
-------------------------------------
Two local datasets are neighbours when they differ in **one record replaced by
another** (bounded DP). The number of examples ``n`` is the same in both, so it
can be sent as it is (Flower's FedAvg sends it anyway, as the aggregation
weight). One record sits in exactly one bin of the label histogram and in one
bin of each of the ``F`` feature histograms (every value is binned: out-of-range
values land in the outer bins). Replacing it moves at most one count from one
bin to another in each of those ``H`` histograms: each changes by
``e_a - e_b`` (L2 norm ``sqrt(2)``), and the whole release, all ``H``
histograms concatenated into one vector, by

.. math:: \Delta_2 = \sqrt{2H}, \qquad \Delta_1 = 2H

(:func:`histogram_l2_sensitivity`, :func:`histogram_l1_sensitivity`). One
release with i.i.d. ``N(0, sigma^2)`` on every bin is the Gaussian mechanism
with noise multiplier ``z = sigma / Delta_2``.

Composition and accounting
--------------------------
A run of ``R`` planned rounds with histograms every ``k`` rounds has
``T = ceil(R / k)`` releases (:func:`planned_releases`). Releases compose in
Renyi DP: the Gaussian mechanism has RDP ``alpha / (2 z^2)`` at every order
``alpha`` (Mironov 2017, Prop. 7), so ``T`` releases with multipliers ``z_t``
have ``alpha / 2 * sum_t z_t^{-2}``: one number per client, its
*inverse-square sum*, carries the whole history. Epsilon at ``delta`` comes
from Opacus' RDP analysis (``compute_rdp`` with ``q = 1``, i.e. no sampling
amplification, and ``get_privacy_spent``, the conversion of Balle et al. 2020,
Thm. 21) over :data:`ORDERS` - exactly what ``opacus.accountants.RDPAccountant``
returns for ``T`` calls of ``step(noise_multiplier=z_t, sample_rate=1.0)``
(tested). :func:`calibrate_noise_multiplier` finds the smallest ``z`` whose
``T``-fold composition stays within the budget.

Laplace noise (which clients may declare by hand) is accounted as pure
``epsilon_t = Delta_1 / b`` per release, which bounds its RDP at every order
(Mironov 2017, Prop. 3), added to the Gaussian part before the conversion.

Opacus' package ``__init__`` imports torch (several seconds); its RDP analysis
module needs only numpy and scipy, so it is loaded on its own
(:func:`_rdp_analysis`), which keeps the Flower mod's workers light.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
import warnings
from functools import lru_cache
from pathlib import Path
from types import ModuleType

import numpy as np

__all__ = [
    "ORDERS",
    "histogram_l2_sensitivity",
    "histogram_l1_sensitivity",
    "planned_releases",
    "is_release_round",
    "epsilon_from_rdp_terms",
    "gaussian_epsilon",
    "calibrate_noise_multiplier",
    "release_terms",
]

ORDERS: tuple[float, ...] = tuple(
    [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [64, 80, 96, 128, 192, 256]
)
"""RDP orders: Opacus' ``RDPAccountant.DEFAULT_ALPHAS`` plus a few larger ones, so that
strong budgets (small epsilon, few releases) do not hit the largest order."""

_OPACUS_RDP = "opacus.accountants.analysis.rdp"


@lru_cache(maxsize=1)
def _rdp_analysis() -> ModuleType:
    """Opacus' ``accountants/analysis/rdp.py``, without importing the opacus package (torch)."""
    if _OPACUS_RDP in sys.modules:
        return sys.modules[_OPACUS_RDP]
    spec = importlib.util.find_spec("opacus")  # locates the package, does not execute it
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("opacus is needed for telemetry accounting: pip install opacus")
    path = Path(next(iter(spec.submodule_search_locations))) / "accountants" / "analysis" / "rdp.py"
    try:
        file_spec = importlib.util.spec_from_file_location("_fedsentinel_opacus_rdp", path)
        module = importlib.util.module_from_spec(file_spec)  # type: ignore[arg-type]
        file_spec.loader.exec_module(module)  # type: ignore[union-attr]
        return module
    except Exception:  # noqa: BLE001 - a layout change in opacus: the ordinary import
        return importlib.import_module(_OPACUS_RDP)


def histogram_l2_sensitivity(num_histograms: int) -> float:
    r"""L2 sensitivity ``sqrt(2H)`` of ``H`` count histograms released together (one record replaced)."""
    if num_histograms < 0:
        raise ValueError("num_histograms must be >= 0")
    return math.sqrt(2.0 * num_histograms)


def histogram_l1_sensitivity(num_histograms: int) -> float:
    """L1 sensitivity ``2H`` of ``H`` count histograms released together (one record replaced)."""
    if num_histograms < 0:
        raise ValueError("num_histograms must be >= 0")
    return 2.0 * num_histograms


def planned_releases(planned_rounds: int, every_k_rounds: int = 1) -> int:
    """``ceil(R / k)``: how many histogram releases a run of ``R`` rounds makes with one every ``k``."""
    if planned_rounds < 1 or every_k_rounds < 1:
        raise ValueError("planned_rounds and every_k_rounds must be >= 1")
    return -(-planned_rounds // every_k_rounds)


def is_release_round(
    server_round: int,
    last_release_round: int | None,
    releases_done: int,
    releases_planned: int,
    every_k_rounds: int = 1,
) -> bool:
    """Whether a client releases histograms this round.

    At most ``releases_planned`` releases in all (after that the budget is
    spent and histograms stop), at least ``k`` rounds apart. Counting rounds
    since the client's own last release, not ``round % k``, keeps the spacing
    when the client is not sampled every round.
    """
    if releases_done >= releases_planned:
        return False
    return last_release_round is None or server_round - last_release_round >= every_k_rounds


def epsilon_from_rdp_terms(
    inverse_square_sum: float, pure_epsilon_sum: float, delta: float
) -> float:
    r"""Epsilon at ``delta`` of releases summarised by their RDP terms.

    RDP at order ``alpha``: ``alpha / 2 * inverse_square_sum + pure_epsilon_sum``
    (Gaussian releases with multipliers ``z_t``: ``sum z_t^{-2}``; pure-DP
    releases: ``sum epsilon_t``), converted by Opacus' ``get_privacy_spent``.
    0 for no releases, ``inf`` when any release was unnoised (pass ``inf``).
    """
    if not 0 < delta < 1:
        raise ValueError("delta must be in (0, 1)")
    if math.isnan(inverse_square_sum) or math.isnan(pure_epsilon_sum):
        raise ValueError("RDP terms must not be NaN")
    if math.isinf(inverse_square_sum) or math.isinf(pure_epsilon_sum):
        return math.inf
    if inverse_square_sum <= 0 and pure_epsilon_sum <= 0:
        return 0.0
    return _epsilon_cached(float(inverse_square_sum), float(pure_epsilon_sum), float(delta))


@lru_cache(maxsize=65536)
def _epsilon_cached(inverse_square_sum: float, pure_epsilon_sum: float, delta: float) -> float:
    rdp = _rdp_analysis()
    orders = list(ORDERS)
    if inverse_square_sum > 0:
        # one Gaussian step with z_eff = (sum z^-2)^(-1/2): Opacus' q = 1 branch, alpha / (2 z_eff^2)
        terms = np.asarray(
            rdp.compute_rdp(
                q=1.0, noise_multiplier=inverse_square_sum**-0.5, steps=1, orders=orders
            ),
            dtype=np.float64,
        )
    else:
        terms = np.zeros(len(orders))
    with warnings.catch_warnings():
        # pure-DP terms are flat in alpha, so their optimum is the largest order: expected
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        eps, _ = rdp.get_privacy_spent(orders=orders, rdp=terms + pure_epsilon_sum, delta=delta)
    return float(eps)


def gaussian_epsilon(noise_multiplier: float, releases: int, delta: float) -> float:
    """Epsilon of ``releases`` Gaussian releases with multiplier ``z`` (``inf`` for ``z == 0``)."""
    if releases <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    return epsilon_from_rdp_terms(releases / noise_multiplier**2, 0.0, delta)


@lru_cache(maxsize=1024)
def calibrate_noise_multiplier(
    epsilon: float, delta: float, releases: int, rtol: float = 1e-6
) -> float:
    """The smallest ``z`` (to ``rtol``) with ``gaussian_epsilon(z, releases, delta) <= epsilon``.

    Bisection on ``log z`` (epsilon falls monotonically in ``z``); the returned
    ``z`` is the upper end of the bracket, so the budget holds.
    """
    if not epsilon > 0 or math.isinf(epsilon):
        raise ValueError("epsilon must be a positive finite number (no budget: do not noise)")
    if releases < 1:
        raise ValueError("releases must be >= 1")
    lo, hi = 1e-3, 1.0
    while gaussian_epsilon(hi, releases, delta) > epsilon:
        lo, hi = hi, hi * 2.0
        if hi > 1e7:
            raise ValueError(
                f"epsilon {epsilon} over {releases} releases is too small to calibrate"
            )
    while hi / lo - 1.0 > rtol:
        mid = math.sqrt(lo * hi)
        if gaussian_epsilon(mid, releases, delta) > epsilon:
            lo = mid
        else:
            hi = mid
    return hi


def release_terms(
    mechanism: np.ndarray, scale: np.ndarray, num_histograms: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per client, the RDP terms of one release: ``(z^-2, pure epsilon)``, vectorised.

    ``mechanism`` holds ``'gaussian'``, ``'laplace'`` or ``None`` (no noise),
    ``scale`` the declared sigma / b in counts, ``num_histograms`` how many
    histograms the report released (0: no release, both terms 0). A release
    without noise, or with a zero scale, gives ``inf`` (no protection).
    """
    mech = np.asarray(mechanism, dtype=object)
    s = np.nan_to_num(np.asarray(scale, dtype=np.float64), nan=0.0)
    h = np.asarray(num_histograms, dtype=np.float64)
    released = h > 0
    gau = released & (mech == "gaussian")
    lap = released & (mech == "laplace")
    bare = released & ~gau & ~lap
    with np.errstate(divide="ignore", invalid="ignore"):
        inv_sq = np.where(gau, 2.0 * h / s**2, 0.0)  # (Delta_2 / sigma)^2 = 2H / sigma^2
        pure = np.where(lap, 2.0 * h / s, 0.0)  # Delta_1 / b = 2H / b
    inv_sq = np.where(gau & (s <= 0), np.inf, inv_sq)
    pure = np.where(lap & (s <= 0), np.inf, pure)
    pure = np.where(bare, np.inf, pure)
    return inv_sq, pure
