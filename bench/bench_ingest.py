"""Ingest benchmark: N rounds x M clients over HTTP with the SDK, SQLite and PostgreSQL.

Each report carries a 10-class label histogram, 20 features x 10 bins and a
128-float sketch (DESIGN.md's sizes). Reports: client reports per second over
the whole run, the median and 99th percentile time to close a round (the close
request, which also runs the signal engine once it exists), and the service's
peak resident memory, sampled early and late to show whether it grows with the
number of rounds stored.

    python -m bench.bench_ingest --rounds 200 --clients 1000 --db sqlite --db postgresql
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
from rich.console import Console
from rich.progress import track

from collectors import MonitorClient
from monitor.server import free_port

N_CLASSES, N_FEATURES, N_BINS, SKETCH_DIM = 10, 20, 10, 128
console = Console()


def run_spec(run_id: str, clients: int) -> dict:
    return {
        "run_id": run_id,
        "task": {"num_classes": N_CLASSES, "feature_names": [f"f{j}" for j in range(N_FEATURES)]},
        "feature_bin_edges": [list(np.linspace(-3, 3, N_BINS + 1)) for _ in range(N_FEATURES)],
        "sketch_dim": SKETCH_DIM,
        "expected_clients": clients,
    }


def round_reports(rng: np.random.Generator, rnd: int, clients: int) -> list[dict]:
    labels = rng.multinomial(200, np.full(N_CLASSES, 1 / N_CLASSES), size=clients).astype(float)
    feats = rng.multinomial(200, np.full(N_BINS, 1 / N_BINS), size=(clients, N_FEATURES)).astype(float)
    sketch = rng.normal(size=(clients, SKETCH_DIM))
    norms = np.abs(rng.normal(1, 0.1, size=clients))
    return [
        {
            "client_id": f"c{i:05d}",
            "num_examples": 200,
            "train_loss": 0.5, "train_accuracy": 0.8, "eval_loss": 0.6, "eval_accuracy": 0.75,
            "wall_time_seconds": 1.0,
            "update_norm": float(norms[i]),
            "update_sketch": sketch[i].tolist(),
            "label_histogram": labels[i].tolist(),
            "feature_histograms": feats[i].tolist(),
            "clipped": False,
        }
        for i in range(clients)
    ]


def peak_rss_bytes(pid: int) -> int:
    """VmHWM of the server and its children (uvicorn workers)."""
    total = 0
    pids = [pid] + [int(p) for p in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()]
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) * 1024
        except FileNotFoundError:
            pass
    return total


def current_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def bench_one(db: str, rounds: int, clients: int, batch: int, pg_admin: str) -> dict:
    data_dir = Path(tempfile.mkdtemp(prefix="fs-bench-"))
    env = {**os.environ, "FEDSENTINEL_DATA_DIR": str(data_dir), "FEDSENTINEL_LOG_LEVEL": "warning"}
    pg_db = None
    if db == "postgresql":
        import psycopg

        pg_db = f"fedsentinel_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(pg_admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{pg_db}"')
        env["FEDSENTINEL_DATABASE_URL"] = pg_admin.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{pg_db}"
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "monitor", "serve", "--port", str(port)], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        rng = np.random.default_rng(0)
        payloads = [round_reports(rng, r, clients) for r in range(min(rounds, 5))]  # reused: generation is not ingest
        close_times: list[float] = []
        rss_samples: list[tuple[int, int]] = []
        with MonitorClient(url, batch_size=batch, timeout_seconds=120) as sdk:
            sdk.register_run(run_spec("bench", clients))
            start = time.perf_counter()
            for rnd in track(range(1, rounds + 1), description=f"{db}: ingesting", console=console):
                sdk.report("bench", rnd, payloads[rnd % len(payloads)])
                t0 = time.perf_counter()
                sdk.close_round("bench", rnd, {"global_eval_accuracy": 0.8, "num_sampled": clients})
                close_times.append(time.perf_counter() - t0)
                if rnd in (max(1, rounds // 10), rounds):
                    rss_samples.append((rnd, current_rss_bytes(proc.pid)))
            elapsed = time.perf_counter() - start
        peak = peak_rss_bytes(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if pg_db:
            import psycopg

            with psycopg.connect(pg_admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{pg_db}" WITH (FORCE)')
    return {
        "db": db,
        "reports_per_second": rounds * clients / elapsed,
        "close_median_ms": 1000 * statistics.median(close_times),
        "close_p99_ms": 1000 * float(np.percentile(close_times, 99)),
        "peak_rss_mib": peak / 2**20,
        "rss_mib": [(r, b / 2**20) for r, b in rss_samples],
        "elapsed_s": elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=500, help="SDK batch size (reports per request)")
    parser.add_argument("--db", action="append", choices=["sqlite", "postgresql"])
    parser.add_argument("--pg-admin", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--out", type=Path, default=Path("bench/results/ingest.md"))
    args = parser.parse_args()
    results = [bench_one(db, args.rounds, args.clients, args.batch, args.pg_admin) for db in args.db or ["sqlite"]]
    lines = [
        f"Ingest, {args.rounds} rounds x {args.clients} clients, batch {args.batch}, 1 worker "
        f"({N_CLASSES} classes, {N_FEATURES}x{N_BINS} feature bins, {SKETCH_DIM}-float sketch)",
        "",
        "| store | reports/s | close median (ms) | close p99 (ms) | peak RSS (MiB) | RSS early -> late (MiB) |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        growth = " -> ".join(f"{mib:.0f} @r{rnd}" for rnd, mib in r["rss_mib"])
        lines.append(
            f"| {r['db']} | {r['reports_per_second']:.0f} | {r['close_median_ms']:.1f} | "
            f"{r['close_p99_ms']:.1f} | {r['peak_rss_mib']:.0f} | {growth} |"
        )
    text = "\n".join(lines)
    console.print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
