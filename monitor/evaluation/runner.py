"""Running the detection benchmark: one case through a fresh in-process service, or a grid of them.

A case is simulated (batched engine) and sent through the real service (a
:class:`monitor.server.ServerThread` over a fresh SQLite store, the SDK's
:class:`collectors.MonitorClient`); the findings are read back through the
query API and scored by :func:`monitor.evaluation.scoring.score_run`.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from monitor.evaluation.grid import Case, make_scenario
from monitor.evaluation.scoring import PairResult, RunResult, score_run

__all__ = ["run_case", "run_grid", "result_from_dict", "quiet_logs"]


class _OpenServiceFilter(logging.Filter):
    """The throw-away loopback service has no API keys on purpose; say so once, not per run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("no API keys configured")


def quiet_logs() -> None:
    logging.getLogger("httpx").setLevel(logging.WARNING)
    log = logging.getLogger("fedsentinel")
    if not any(isinstance(f, _OpenServiceFilter) for f in log.filters):
        log.addFilter(_OpenServiceFilter())


def _fetch_findings(url: str, run_id: str) -> list[dict[str, Any]]:
    import httpx

    items: list[dict[str, Any]] = []
    with httpx.Client(base_url=url, timeout=30) as http:
        while True:
            page = http.get(
                f"/api/v1/runs/{run_id}/findings", params={"limit": 1000, "offset": len(items)}
            )
            page.raise_for_status()
            body = page.json()
            items.extend(body["items"])
            if not body["items"] or len(items) >= body["total"]:
                return items


class _Recording:
    """Passes everything to the SDK and notes which clients reported in which round."""

    def __init__(self, sink: Any) -> None:
        self.sink = sink
        self.rounds: dict[str, list[int]] = {}

    def register_run(self, spec: dict[str, Any]) -> None:
        self.sink.register_run(spec)

    def report(self, run_id: str, round: int, reports: list[dict[str, Any]]) -> None:
        for r in reports:
            self.rounds.setdefault(str(r["client_id"]), []).append(round)
        self.sink.report(run_id, round, reports)

    def close_round(self, run_id: str, round: int, summary: dict[str, Any]) -> None:
        self.sink.close_round(run_id, round, summary)


def run_case(case: Case) -> dict[str, Any]:
    """Simulate one case through a fresh in-process service and score it (a JSON-able dict)."""
    import torch

    from collectors import MonitorClient
    from monitor.server import ServerThread
    from monitor.settings import Settings
    from simulator import run_scenario

    # the service runs in a thread of this process; a second BLAS thread only contends with it
    torch.set_num_threads(1)
    quiet_logs()
    scenario = make_scenario(case)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fedsentinel-eval-") as tmp:
        settings = Settings(
            data_dir=Path(tmp),
            host="127.0.0.1",
            port=0,
            sqlite_synchronous="OFF",
            log_level="warning",
        )
        with ServerThread(settings) as url:
            with MonitorClient(url) as sdk:
                seen = _Recording(sdk)
                result = run_scenario(scenario, seen, progress=False)
                sdk.wait_for_analysis(scenario.run_id)  # the close returns before the analysis
            findings = _fetch_findings(url, scenario.run_id)
    scored = score_run(
        result.ground_truth,
        findings,
        run_id=scenario.run_id,
        client_ids=[scenario.client_id(k) for k in range(scenario.num_clients)],
        rounds=scenario.rounds,
        alpha=case.alpha,
        seed=case.seed,
        condition=case.condition,
        client_rounds=seen.rounds if scenario.sample_fraction < 1 else None,
    )
    return {
        "result": scored.to_dict(),
        "seconds": time.perf_counter() - started,
        "final_accuracy": result.final_accuracy,
        "findings": [
            {
                k: f[k]
                for k in ("kind", "severity", "client_id", "first_round", "last_round", "message")
            }
            for f in findings
        ],
    }


def result_from_dict(d: dict[str, Any]) -> RunResult:
    d = dict(d)
    pairs = [PairResult(**p) for p in d.pop("pairs")]
    return RunResult(pairs=pairs, **d)


def run_grid(
    cases: Sequence[Case],
    *,
    jobs: int = 1,
    on_done: Callable[[Case, dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run every case (in ``jobs`` spawned processes when > 1); results in the order of ``cases``."""
    out: dict[int, dict[str, Any]] = {}
    if jobs <= 1:
        for i, case in enumerate(cases):
            out[i] = run_case(case)
            if on_done:
                on_done(case, out[i])
    else:
        import multiprocessing

        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(run_case, case): i for i, case in enumerate(cases)}
            for fut in as_completed(futures):
                i = futures[fut]
                out[i] = fut.result()
                if on_done:
                    on_done(cases[i], out[i])
    return [out[i] for i in range(len(cases))]
