"""End-to-end benchmark: 10,000-client rounds through the SDK, analysis off the request path.

One run of ``--clients`` clients x ``--rounds`` rounds goes through
:class:`collectors.MonitorClient` into ``fedsentinel serve`` (one uvicorn
worker), per configuration:

* ``sqlite``: SQLite (WAL, synchronous FULL), analysis in the service's own
  worker thread (the default);
* ``postgresql:N``: PostgreSQL, ``FEDSENTINEL_ANALYSIS=external`` and N
  ``fedsentinel worker`` processes (``FEDSENTINEL_ANALYSIS_POLL_SECONDS`` 0.25).

Reported per configuration:

* ingest seconds per round: the SDK's ``report`` call for the round's reports;
* the close request (ms): it returns once the close is committed;
* close-to-findings: the round's ``analyzed_at - closed_at`` (server clock, from
  the rounds API), so analysis that overlaps the next round's ingest counts as it
  happens; and the wait after the last close until every round is analysed;
* ``/metrics``: median wall time and size of 10 scrapes after the run (the
  exporter caps per-client series, so 10,000 clients are not 10,000 series);
* memory: the peak RSS (VmHWM) of the service and of each worker process;
* storage: store bytes per report, then after ``fedsentinel prune`` keeps the
  arrays of the last round only (SQLite: file size after VACUUM; PostgreSQL:
  ``client_report`` after VACUUM FULL), i.e. bytes per report once compacted.

Report bodies are generated before the clock starts (a few distinct rounds,
reused): generation is not ingest. Run by hand::

    python -m bench.bench_scale                      # writes bench/results/scale.md
    python -m bench.bench_scale --clients 1000 --rounds 5 --config sqlite --no-write
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np
from rich.console import Console
from rich.progress import track

from bench.bench_ingest import peak_rss_bytes, round_reports, run_spec
from collectors import MonitorClient
from monitor.server import free_port

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "scale.md"
CONFIGS = ("sqlite", "postgresql:1", "postgresql:2", "postgresql:4")
PG_ADMIN = os.environ.get(
    "FEDSENTINEL_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
console = Console(stderr=True)


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the service exited during start-up")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not become ready")


def _ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


class Deployment:
    """The service (and worker processes) for one configuration, on a fresh store."""

    def __init__(self, config: str, data_dir: Path) -> None:
        self.config = config
        self.dialect, _, n = config.partition(":")
        self.workers = int(n or 0)
        self.env = {
            **os.environ,
            "FEDSENTINEL_DATA_DIR": str(data_dir),
            "FEDSENTINEL_LOG_LEVEL": "warning",
        }
        self.pg_db: str | None = None
        if self.dialect == "postgresql":
            import psycopg

            self.pg_db = f"fedsentinel_bench_{uuid.uuid4().hex[:8]}"
            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{self.pg_db}"')
            base = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
            self.env["FEDSENTINEL_DATABASE_URL"] = f"{base}/{self.pg_db}"
        if self.workers:
            self.env["FEDSENTINEL_ANALYSIS"] = "external"
            self.env["FEDSENTINEL_ANALYSIS_POLL_SECONDS"] = "0.25"
        self.database_url = self.env.get(
            "FEDSENTINEL_DATABASE_URL", f"sqlite:///{data_dir / 'fedsentinel.db'}"
        )
        self.db_file = data_dir / "fedsentinel.db"
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> Deployment:
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        self.service = subprocess.Popen(
            [sys.executable, "-m", "monitor", "serve", "--port", str(self.port)],
            env=self.env,
            **quiet,
        )
        self.procs.append(self.service)
        _wait_ready(self.url, self.service)
        logs = []
        for i in range(self.workers):
            log = self.data_dir / f"worker-{i}.log"
            logs.append(log)
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "monitor", "worker"],
                    env=self.env,
                    stdout=subprocess.DEVNULL,
                    stderr=log.open("wb"),
                )  # fmt: skip
            )
        deadline = time.monotonic() + 180  # a worker imports the engine (SciPy) before it polls
        while not all(log.exists() and "polling every" in log.read_text() for log in logs):
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                raise RuntimeError("analysis workers did not start")
            time.sleep(0.2)
        return self

    def peak_rss(self) -> dict[str, float]:
        service = peak_rss_bytes(self.service.pid) / 2**20
        workers = [peak_rss_bytes(p.pid) / 2**20 for p in self.procs[1:]]
        return {"service_mib": service, "worker_max_mib": max(workers, default=0.0)}

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
        if self.pg_db:
            import psycopg

            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.pg_db}" WITH (FORCE)')


def _store_bytes(dep: Deployment) -> int:
    """The store's size as it would be after a VACUUM (what the rows really take)."""
    if dep.dialect == "sqlite":
        import sqlite3

        conn = sqlite3.connect(dep.db_file, isolation_level=None)
        try:
            conn.execute("VACUUM")  # in WAL mode the file shrinks only at a checkpoint: count pages
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            return int(pages) * int(conn.execute("PRAGMA page_size").fetchone()[0])
        finally:
            conn.close()
    import psycopg

    url = PG_ADMIN.rsplit("/", 1)[0] + f"/{dep.pg_db}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM FULL client_report")
        return int(conn.execute("SELECT pg_total_relation_size('client_report')").fetchone()[0])


def _storage(dep: Deployment, reports: int, rounds: int) -> dict[str, float]:
    before = _store_bytes(dep)
    done = subprocess.run(
        [sys.executable, "-m", "monitor", "prune", "--retention-rounds", "1"],
        env={**dep.env, "FEDSENTINEL_DATABASE_URL": dep.database_url}, capture_output=True, text=True, check=True,
    )  # fmt: skip
    after = _store_bytes(dep)
    compacted = reports * (rounds - 1) / rounds
    return {
        "bytes_per_report": before / reports,
        "bytes_per_report_compacted": (after - (before / reports) * (reports - compacted))
        / compacted,
        "prune_output": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "",
    }


def bench_one(config: str, clients: int, rounds: int, storage: bool) -> dict:
    rng = np.random.default_rng(0)
    payloads = [round_reports(rng, r, clients) for r in range(3)]
    with (
        tempfile.TemporaryDirectory(prefix="fs-scale-") as tmp,
        Deployment(config, Path(tmp)) as dep,
    ):
        ingest_s, close_ms = [], []
        with MonitorClient(dep.url, timeout_seconds=300) as sdk:
            sdk.register_run(run_spec("scale", clients))
            started = time.perf_counter()
            for rnd in track(
                range(1, rounds + 1), description=f"{config}: {clients:,} clients", console=console
            ):
                t0 = time.perf_counter()
                sdk.report("scale", rnd, payloads[rnd % len(payloads)])
                t1 = time.perf_counter()
                sdk.close_round("scale", rnd, {"global_eval_accuracy": 0.8, "num_sampled": clients})
                ingest_s.append(t1 - t0)
                close_ms.append(1000 * (time.perf_counter() - t1))
            last_close = time.perf_counter()
            sdk.wait_for_analysis("scale", timeout_seconds=1800)
            drain_s = time.perf_counter() - last_close
            total_s = time.perf_counter() - started
        rows = httpx.get(
            f"{dep.url}/api/v1/runs/scale/rounds", params={"limit": 1000}, timeout=60
        ).json()["items"]
        latency = [_ts(r["analyzed_at"]) - _ts(r["closed_at"]) for r in rows]
        scrape_s, scrape_bytes = [], 0
        for _ in range(10):
            t = time.perf_counter()
            body = httpx.get(f"{dep.url}/metrics", timeout=60).content
            scrape_s.append(time.perf_counter() - t)
            scrape_bytes = len(body)
        findings = httpx.get(
            f"{dep.url}/api/v1/runs/scale/findings", params={"limit": 1}, timeout=60
        ).json()["total"]
        result = {
            "config": config,
            "clients": clients,
            "rounds": rounds,
            "ingest_s_per_round": statistics.median(ingest_s),
            "reports_per_second": clients * rounds / sum(ingest_s),
            "close_ms_median": statistics.median(close_ms),
            "close_ms_max": max(close_ms),
            "close_to_findings_s_median": statistics.median(latency),
            "close_to_findings_s_max": max(latency),
            "drain_after_last_close_s": drain_s,
            "total_s": total_s,
            "scrape_ms_median": 1000 * statistics.median(scrape_s),
            "scrape_kib": scrape_bytes / 1024,
            "findings": findings,
            **dep.peak_rss(),
        }
        if storage:
            result.update(_storage(dep, clients * rounds, rounds))
    return result


def render(results: list[dict]) -> str:
    r0 = results[0]
    lines = [
        f"# {r0['clients']:,}-client rounds end to end",
        "",
        f"`python -m bench.bench_scale`: {r0['clients']:,} clients x {r0['rounds']} rounds through the SDK "
        f"(default batches), one uvicorn worker; Python {platform.python_version()}. The machine is a shared "
        "2-core VM that other engineers' tests and benchmarks were loading while this ran (load average "
        "13-19, this session's simulator benchmark included): absolute figures are pessimistic and move between runs; compare rows of one run.",
        "",
        "| store, analysis | ingest s/round (median) | reports/s | close request ms (median / max) "
        "| close -> findings s (median / max) | wait after last close s | /metrics ms, KiB "
        "| peak RSS MiB: service / each worker | findings |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        what = (
            "SQLite, in-process worker"
            if r["config"] == "sqlite"
            else (f"PostgreSQL, {r['config'].split(':')[1]} worker process(es)")
        )
        lines.append(
            f"| {what} | {r['ingest_s_per_round']:.1f} | {r['reports_per_second']:,.0f} "
            f"| {r['close_ms_median']:.0f} / {r['close_ms_max']:.0f} "
            f"| {r['close_to_findings_s_median']:.1f} / {r['close_to_findings_s_max']:.1f} "
            f"| {r['drain_after_last_close_s']:.1f} | {r['scrape_ms_median']:.0f}, {r['scrape_kib']:.0f} "
            f"| {r['service_mib']:.0f} / {r['worker_max_mib']:.0f} | {r['findings']} |"
        )
    stored = [r for r in results if "bytes_per_report" in r]
    if stored:
        lines += ["", "Storage per report after VACUUM (SQLite: the whole database file; PostgreSQL: the client_report table with its indexes and TOAST), before and after compaction (`fedsentinel prune`):", "",
                  "| store | bytes/report | compacted bytes/report |", "|---|---:|---:|"]  # fmt: skip
        for r in stored:
            lines.append(
                f"| {r['config'].split(':')[0]} | {r['bytes_per_report']:,.0f} | {r['bytes_per_report_compacted']:,.0f} |"
            )
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument(
        "--config", action="append", help=f"repeatable; default {', '.join(CONFIGS)}"
    )
    parser.add_argument(
        "--no-storage", action="store_true", help="skip the VACUUM / prune storage measurement"
    )
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    configs = args.config or list(CONFIGS)
    results = []
    for config in configs:
        storage = not args.no_storage and config in ("sqlite", "postgresql:1")
        results.append(bench_one(config, args.clients, args.rounds, storage))
        console.print(json.dumps(results[-1]))
    text = render(results)
    print(text)
    if not args.no_write:
        RESULTS.write_text(text)
        RESULTS.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
        console.print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
