"""A client's update norm judged against its own usual as well as the round's.

Clients of one federation hold different amounts of data, so an honest client
that takes more (or fewer) local steps sends an update 3-5x (or a third of)
the round's median norm, round after round. That is its normal, not a fault.
The log norm ratio to the round median,

.. math:: \\ell_{i,t} = \\ln\\bigl(\\|u_{i,t}\\| / \\operatorname{median}_j \\|u_{j,t}\\|\\bigr),

is therefore compared with the client's own reference :math:`\\bar\\ell_i`
(the mean of its first ``k`` usable rounds, then an EWMA with a bounded step); the round's common moves cancel in the ratio.
"""

from __future__ import annotations

import numpy as np

from monitor.signals.divergence import robust_z

__all__ = ["update_reference", "self_referenced_norm"]


def update_reference(
    ref: np.ndarray,
    count: np.ndarray,
    value: np.ndarray,
    use: np.ndarray,
    *,
    need: int,
    rate: float,
    band: float,
) -> tuple[np.ndarray, np.ndarray]:
    r"""The next reference and count after one round (new arrays; inputs unchanged).

    While ``count < need`` a usable value joins the running mean
    (:math:`\bar\ell \leftarrow \bar\ell + (\ell - \bar\ell) / (n + 1)`). Once
    the reference is made it follows the client as an EWMA whose step is clipped,
    :math:`\bar\ell \leftarrow \bar\ell + \lambda\,\operatorname{clip}(\ell - \bar\ell, \pm\ln b)`
    with ``rate`` :math:`\lambda` and ``band`` :math:`b` (a factor, > 1): a slow
    honest drift (a client whose local loss converges sends ever smaller
    updates) is followed, one noisy round moves it by at most
    :math:`\lambda \ln b`, and a step is learnt only slowly.
    ``use``: rounds that may teach the reference (the caller leaves out the
    rounds it judged unusual). NaN values are never used.
    """
    ref = np.asarray(ref, dtype=np.float64).copy()
    count = np.asarray(count, dtype=np.int64).copy()
    value = np.asarray(value, dtype=np.float64)
    use = np.asarray(use, dtype=bool) & np.isfinite(value)
    filling = use & (count < need)
    n = count[filling]
    r0 = np.where(n > 0, ref[filling], 0.0)
    ref[filling] = r0 + (value[filling] - r0) / (n + 1)
    count[filling] += 1
    made = use & ~filling & (count >= need)
    step = np.clip(value - ref, -np.log(band), np.log(band))
    ref[made] += rate * step[made]
    return ref, count


def self_referenced_norm(
    log_ratio: np.ndarray,
    z_round: np.ndarray,
    ref: np.ndarray,
    has_ref: np.ndarray,
    mask: np.ndarray,
    *,
    min_ratio: float,
    min_change: float,
    unreferenced_ratio: float,
) -> tuple[np.ndarray, np.ndarray]:
    r"""(robust z, material) of the norm side of update divergence.

    With a reference (``has_ref``), :math:`d_i = \ell_i - \bar\ell_i` is the
    move from the client's usual and the z is the robust z of :math:`d` over
    the referenced clients in ``mask`` (how far this client moved against how
    far the others moved from theirs); the effect is material when

    .. math:: |\ell_i| \ge \ln R,\quad |d_i| \ge \ln C,\quad
              \operatorname{sign} d_i = \operatorname{sign} \ell_i

    (``R = min_ratio``, ``C = min_change``): off by a factor from the round *and*
    from its own usual, away from the median (a low client coming back up is not
    a fault).
    Fewer than 5 referenced clients: the round's z ``z_round`` stands in.
    Without a reference the round's z is used and the effect is material only
    beyond the stricter ``unreferenced_ratio`` :math:`R_0`:
    :math:`|\ell_i| \ge \ln R_0` (a client that sends an exploded update from
    its very first round is still found; an honest one is rarely that far off).
    """
    lr = np.asarray(log_ratio, dtype=np.float64)
    z_round = np.asarray(z_round, dtype=np.float64)
    has = np.asarray(has_ref, dtype=bool) & np.isfinite(lr)
    d = np.where(has, lr - np.asarray(ref, dtype=np.float64), np.nan)
    z_self = robust_z(d, np.asarray(mask, dtype=bool) & has)
    z = np.where(has & np.isfinite(z_self), z_self, z_round)
    far_round = np.nan_to_num(np.abs(lr), nan=0.0) >= np.log(min_ratio)
    far_self = np.nan_to_num(np.abs(d), nan=0.0) >= np.log(min_change)
    material = np.where(
        has,
        far_round & far_self & (np.sign(d) == np.sign(lr)),
        np.nan_to_num(np.abs(lr), nan=0.0) >= np.log(unreferenced_ratio),
    )
    return z, material
