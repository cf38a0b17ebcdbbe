"""What a detector emits: active signals, and the helpers their sentences are written with."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["SEVERITIES", "ActiveSignal", "fmt", "pct", "json_num", "severity_for"]

SEVERITIES = ("info", "warning", "critical")


@dataclass
class ActiveSignal:
    """One signal over its threshold this round (client-level when ``client_id`` is set)."""

    kind: str
    severity: str
    client_id: str | None
    score: float
    threshold: float
    message: str
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str | None]:
        return (self.kind, self.client_id)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


READABLE_MAX = 1e6
"""Beyond this magnitude numbers are written in scientific notation ("1.0e+308", not 309 digits)."""


def fmt(x: Any, nd: int = 2) -> str:
    """``nd`` decimals, or scientific notation for magnitudes a sentence cannot show in full."""
    x = float(x)
    if math.isfinite(x) and abs(x) >= READABLE_MAX:
        return f"{x:.1e}"
    return f"{x:.{nd}f}"


def pct(x: float) -> str:
    return f"{100.0 * float(x):.0f}%"


def json_num(x: Any) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def severity_for(ratio: float, critical_factor: float) -> str:
    """``critical`` at ``critical_factor`` x the threshold, else ``warning``."""
    return "critical" if ratio >= critical_factor else "warning"
