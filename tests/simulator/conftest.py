"""Helpers for simulator tests: a sink that keeps everything in memory."""

from __future__ import annotations

from typing import Any

import pytest
import torch


class RecordingSink:
    """A ReportSink that keeps the run spec, reports per round and round closes."""

    def __init__(self) -> None:
        self.spec: dict[str, Any] | None = None
        self.registrations = 0
        self.reports: dict[int, list[dict[str, Any]]] = {}
        self.closes: dict[int, dict[str, Any]] = {}
        self.order: list[tuple[str, int | None]] = []

    def register_run(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.registrations += 1
        self.order.append(("register_run", None))

    def report(self, run_id: str, round: int, reports: list[dict[str, Any]]) -> None:
        self.reports.setdefault(round, []).extend(reports)
        self.order.append(("report", round))

    def close_round(self, run_id: str, round: int, summary: dict[str, Any]) -> None:
        self.closes[round] = summary
        self.order.append(("close_round", round))

    def by_client(self, round: int) -> dict[str, dict[str, Any]]:
        return {r["client_id"]: r for r in self.reports.get(round, [])}


@pytest.fixture(autouse=True, scope="session")
def _few_threads() -> None:
    torch.set_num_threads(1)  # the CI machine has 2 cores shared with other jobs
