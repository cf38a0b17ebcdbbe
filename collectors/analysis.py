"""Waiting for a round's analysis: the service analyses a round after its close has returned.

Works with anything that has httpx's ``get(path, ...)`` (``httpx.Client``,
FastAPI's ``TestClient``), so the SDK, the CLI and the tests share it.
"""

from __future__ import annotations

import time
from typing import Any, Protocol


class _Getter(Protocol):
    def get(self, url: str, **kwargs: Any) -> Any: ...


class AnalysisTimeout(TimeoutError):
    """The service did not finish analysing in time (``status`` is its last answer)."""

    def __init__(self, message: str, status: dict[str, Any] | None) -> None:
        super().__init__(message)
        self.status = status


def analysis_done(status: dict[str, Any], round_number: int | None) -> bool:
    """True when every closed round (or every closed round up to ``round_number``) is analysed."""
    if round_number is None:
        return status["lag_rounds"] == 0
    last = status["last_analyzed_round"]
    pending = status["pending_rounds"]
    return last is not None and last >= round_number and (not pending or pending[0] > round_number)


def wait_for_analysis(
    http: _Getter,
    run_id: str,
    round_number: int | None = None,
    *,
    timeout_seconds: float = 120.0,
    poll_seconds: float = 0.05,
    prefix: str = "/api/v1",
) -> dict[str, Any]:
    """Poll ``GET /runs/{run}/analysis`` until :func:`analysis_done`; return the final status."""
    deadline = time.monotonic() + timeout_seconds
    status: dict[str, Any] | None = None
    while True:
        response = http.get(f"{prefix}/runs/{run_id}/analysis")
        if response.status_code != 200:
            raise RuntimeError(
                f"GET analysis of run {run_id}: HTTP {response.status_code} {response.text[:300]}"
            )
        status = response.json()
        if analysis_done(status, round_number):
            return status
        if time.monotonic() >= deadline:
            what = "every closed round" if round_number is None else f"round {round_number}"
            raise AnalysisTimeout(
                f"run {run_id}: {what} not analysed after {timeout_seconds:.0f} s "
                f"({status['lag_rounds']} closed rounds pending, first {status['pending_rounds'][:5]})",
                status,
            )
        time.sleep(poll_seconds)
