"""Secure-aggregation mode: the update statistics a client computes on its own side.

Under secure aggregation the server only sees the sum of the updates, so it
cannot sketch a client's update (DESIGN.md, "Privacy modes of the telemetry").
The client computes the few numbers the divergence signals need instead and
reports them in place of the sketch:

* ``update_norm``: ``||u||``, ``u = w_local - w_global``;
* ``update_cosine_previous_global``: ``cos(u, g)``, ``g`` the previous global
  update as the client saw it: the difference of the last two global models
  it received (spanning several rounds when it was not sampled in between);
* ``update_repeated``: ``u`` repeats the client's previous update, by the
  service's stale rule: cosine >= 1 - 1e-6 and norms within 1e-6 relative.

Pure numpy: imported by the Flower mod (:mod:`collectors.flower.mod`) and the
simulator, which must compute exactly the same numbers.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["STALE_COSINE_MIN", "STALE_NORM_RTOL", "update_scalars"]

STALE_COSINE_MIN = 1.0 - 1e-6
STALE_NORM_RTOL = 1e-6
"""An update "repeats" the previous one at cosine >= 1 - 1e-6 and norms within 1e-6
relative: the service's stale-update thresholds (``stale_cosine_min``, ``stale_norm_rtol``)."""


def update_scalars(
    update: np.ndarray,
    previous_global: np.ndarray | None,
    global_now: np.ndarray,
    previous_update: np.ndarray | None,
) -> dict[str, Any]:
    """Secure-aggregation scalars: norm, cosine to the previous global update, repeat flag.

    The previous global update is ``global_now - previous_global``: the change
    between the two global models this client last received (several rounds
    when it was not sampled in between). NaN cosine when there is none yet or
    a vector is zero or not finite.
    """
    norm = float(np.linalg.norm(update))
    out: dict[str, Any] = {"update_norm": norm, "update_cosine_previous_global": math.nan}
    if previous_global is not None and previous_global.shape == global_now.shape:
        out["update_cosine_previous_global"] = _cosine(update, global_now - previous_global)
    repeated = False
    if previous_update is not None and previous_update.shape == update.shape:
        prev_norm = float(np.linalg.norm(previous_update))
        cos = _cosine(update, previous_update)
        repeated = bool(
            norm > 0
            and prev_norm > 0
            and math.isfinite(cos)
            and cos >= STALE_COSINE_MIN
            and abs(norm / prev_norm - 1.0) <= STALE_NORM_RTOL
        )
    out["update_repeated"] = repeated
    return out


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    den = float(np.linalg.norm(a) * np.linalg.norm(b))
    if not math.isfinite(den) or den <= 0:
        return math.nan
    return float(np.clip(np.dot(a, b) / den, -1.0, 1.0))
