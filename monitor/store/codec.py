"""Encoding of arrays and possibly non-finite scalars for storage."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import numpy as np

_DTYPE = np.dtype("<f8")
_NONFINITE_NAMES = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def pack(values: Sequence[float] | None) -> bytes | None:
    if values is None:
        return None
    return np.asarray(values, dtype=_DTYPE).tobytes()


def pack_ragged(rows: Sequence[Sequence[float]] | None) -> bytes | None:
    """Concatenate rows (their lengths come from the run's configuration)."""
    if rows is None:
        return None
    if not rows:
        return b""
    return np.concatenate([np.asarray(r, dtype=_DTYPE) for r in rows]).tobytes()


def unpack(blob: bytes | None) -> np.ndarray | None:
    if blob is None:
        return None
    return np.frombuffer(blob, dtype=_DTYPE)


def unpack_ragged(blob: bytes | None, lengths: Sequence[int]) -> list[np.ndarray] | None:
    flat = unpack(blob)
    if flat is None:
        return None
    return np.split(flat, np.cumsum(lengths)[:-1]) if lengths else []


def _name(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def split_nonfinite(values: dict[str, float | None]) -> tuple[dict[str, float | None], str | None]:
    """Replace non-finite scalars by None and return them as a JSON map."""
    finite: dict[str, float | None] = {}
    special: dict[str, str] = {}
    for key, value in values.items():
        if value is not None and not math.isfinite(value):
            special[key] = _name(value)
            finite[key] = None
        else:
            finite[key] = value
    return finite, (json.dumps(special, sort_keys=True) if special else None)


def restore_nonfinite(values: dict[str, float | None], nonfinite: str | None) -> dict[str, float | None]:
    if not nonfinite:
        return values
    restored = dict(values)
    for key, name in json.loads(nonfinite).items():
        if key in restored:
            restored[key] = _NONFINITE_NAMES[name]
    return restored
