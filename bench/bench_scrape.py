"""Scrape benchmark: /metrics time and size for runs of 100, 1,000 and 10,000 clients.

Each run is put in a SQLite store the way the engine leaves it: two analysed
rounds (a 48-column score matrix per round, as monitor/detectors.py writes),
the latest round's client reports, and a few open findings. A real
``fedsentinel serve`` process is then scraped over HTTP in the classic text
format, the way Prometheus does: the first (cold) scrape, then the median and
99th percentile of the following ones, the exposition size and the number of
series.

    python -m bench.bench_scrape --clients 100 --clients 1000 --clients 10000 --scrapes 100
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import insert

from monitor.exporter import CLIENT_SCORE_METRICS, STREAK_METRICS
from monitor.server import free_port
from monitor.settings import Settings
from monitor.store import Store
from monitor.store.scores import RoundScores, save_round_scores
from monitor.store.tables import ClientReportRow, FindingRow, RoundRow, RunRow, utcnow

SCORE_WIDTH = 48
RESULTS = Path(__file__).resolve().parent / "results" / "scrape.md"


def populate(store: Store, run_id: str, clients: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    ids = [f"c{i:05d}" for i in range(clients)]
    names = [key for _, key, _ in CLIENT_SCORE_METRICS + STREAK_METRICS]
    names += [f"extra_score_{j}" for j in range(SCORE_WIDTH - len(names))]
    with store.write_session() as session:
        session.add(
            RunRow(run_id=run_id, config_json="{}", config_hash="0" * 64, expected_clients=clients)
        )
        session.flush()
        for rnd in (1, 2):
            session.add(RoundRow(run_id=run_id, round=rnd, status="closed", closed_at=utcnow(),
                                 reports=clients, analyzed=True))  # fmt: skip
            scores = {name: rng.random(clients) for name in names}
            scores["anomaly_score"] = rng.gamma(2.0, 0.2, clients)
            save_round_scores(
                session, RoundScores(run_id, rnd, ids, scores, {"accuracy_mean": 0.8}, 0.01)
            )
        session.execute(
            insert(ClientReportRow),
            [
                {"run_id": run_id, "round": 2, "client_id": c, "content_hash": "0" * 64, "status": "ok",
                 "eval_accuracy": float(a), "eval_loss": float(lo), "received_at": utcnow()}
                for c, a, lo in zip(ids, rng.random(clients), rng.random(clients), strict=True)
            ],
        )  # fmt: skip
        for i in range(5):
            session.add(FindingRow(run_id=run_id, kind="label_drift", severity="warning", client_id=ids[i * 7],
                                   first_round=1, last_round=2, message="bench"))  # fmt: skip


def bench_one(clients: int, scrapes: int, top_k: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        store = Store(url, sqlite_synchronous="OFF")
        store.create_schema()
        populate(store, f"run-{clients}", clients)
        store.dispose()
        port = free_port()
        env = {**os.environ, "FEDSENTINEL_DATABASE_URL": url, "FEDSENTINEL_DATA_DIR": tmp,
               "FEDSENTINEL_EXPORTER_TOP_K_CLIENTS": str(top_k)}  # fmt: skip
        proc = subprocess.Popen(
            [sys.executable, "-m", "monitor", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("service did not start")
                time.sleep(0.1)
            with httpx.Client(base_url=base, timeout=30) as http:
                t0 = time.perf_counter()
                first = http.get("/metrics")
                cold = time.perf_counter() - t0
                times = []
                for _ in range(scrapes):
                    t0 = time.perf_counter()
                    response = http.get("/metrics")
                    times.append(time.perf_counter() - t0)
            text = response.text
            series = sum(len(f.samples) for f in text_string_to_metric_families(text))
            per_client = sum(1 for line in text.splitlines() if line.startswith("fl_client_"))
            assert first.status_code == 200
        finally:
            proc.terminate()
            proc.wait(timeout=15)
    times.sort()
    return {
        "clients": clients,
        "top_k": top_k,
        "cold_ms": cold * 1e3,
        "median_ms": statistics.median(times) * 1e3,
        "p99_ms": times[min(len(times) - 1, int(round(0.99 * (len(times) - 1))))] * 1e3,
        "bytes": len(text.encode()),
        "series": series,
        "client_series": per_client,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, action="append", help="clients per run (repeatable)")
    parser.add_argument("--scrapes", type=int, default=100)
    parser.add_argument("--top-k", type=int, default=Settings().exporter_top_k_clients)
    parser.add_argument(
        "--write",
        action="store_true",
        help=f"write {RESULTS.relative_to(Path.cwd()) if RESULTS.is_relative_to(Path.cwd()) else RESULTS}",
    )
    args = parser.parse_args()
    rows = [bench_one(n, args.scrapes, args.top_k) for n in (args.clients or [100, 1_000, 10_000])]
    header = ("| clients | top-k | cold scrape (ms) | median (ms) | p99 (ms) | exposition (KiB) | series | per-client series |\n"
              "|---:|---:|---:|---:|---:|---:|---:|---:|")  # fmt: skip
    lines = [
        f"| {r['clients']:,} | {r['top_k']} | {r['cold_ms']:.1f} | {r['median_ms']:.1f} | {r['p99_ms']:.1f} | "
        f"{r['bytes'] / 1024:.1f} | {r['series']:,} | {r['client_series']:,} |"
        for r in rows
    ]
    table = "\n".join([header, *lines])
    print(table)
    if args.write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(
            "# /metrics scrape benchmark\n\n"
            f"`python -m bench.bench_scrape --scrapes {args.scrapes} --write` on this 2-core VM: one run per row, "
            "SQLite store, a real `fedsentinel serve` process scraped over HTTP in the classic text format "
            f"({args.scrapes} scrapes after a cold one). Each run has two analysed rounds with a "
            f"{SCORE_WIDTH}-column score matrix, the latest round's reports and 5 open client findings, so "
            "the per-client set is the top-k plus up to 5 flagged clients.\n\n"
            f"{table}\n\n"
            "The cold scrape decodes the score matrices; later scrapes reuse them (cached by run, round "
            "and write time) and pay for the store queries and the exposition of the capped series. "
            "The federation aggregates and quantiles are computed over every client at every scrape.\n"
        )


if __name__ == "__main__":
    main()
