"""Ingest benchmark: N rounds x M clients over HTTP with the SDK, against its floor, on SQLite and PostgreSQL.

Each report carries a 10-class label histogram, 20 features x 10 bins and a
128-float sketch (DESIGN.md's sizes). For every store, in one session:

- **floor**: the same request bodies parsed (orjson; packed: base64 into numpy)
  and their rows bulk-inserted with the bare driver (``sqlite3``/``psycopg``
  ``executemany``, one transaction per body, same schema and durability), with
  no validation, hashing or framework: what ingest cannot beat;
- **service**: ``fedsentinel serve`` driven by the SDK, JSON and packed
  (float32). *Ingest* counts the report POSTs only; *end to end* also counts the
  round closes (and whatever analysis still runs inside them);
- **baseline** (``--baseline DIR``): the same harness on another checkout (the
  previous main), its SDK and its service.

Service runs are child processes of this script, started with the code root
they measure on ``PYTHONPATH``, so the new and the old code run the same way.
Repeats are interleaved (floor, service, baseline, floor, ...) and medians
quoted, because the machine is shared.

    python -m bench.bench_ingest --rounds 20 --clients 1000 --db sqlite --db postgresql \\
        --baseline /tmp/fs-old --repeats 3
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import orjson

N_CLASSES, N_FEATURES, N_BINS, SKETCH_DIM = 10, 20, 10, 128
ROOT = Path(__file__).resolve().parents[1]
DISTINCT_ROUNDS = 5  # payloads are reused: generating them is not ingest


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
    feats = rng.multinomial(200, np.full(N_BINS, 1 / N_BINS), size=(clients, N_FEATURES)).astype(
        float
    )
    sketch = rng.normal(size=(clients, SKETCH_DIM))
    norms = np.abs(rng.normal(1, 0.1, size=clients))
    return [
        {
            "client_id": f"c{i:05d}",
            "num_examples": 200,
            "train_loss": 0.5,
            "train_accuracy": 0.8,
            "eval_loss": 0.6,
            "eval_accuracy": 0.75,
            "wall_time_seconds": 1.0,
            "update_norm": float(norms[i]),
            "update_sketch": sketch[i].tolist(),
            "label_histogram": labels[i].tolist(),
            "feature_histograms": feats[i].tolist(),
            "clipped": False,
        }
        for i in range(clients)
    ]


def payloads(rounds: int, clients: int) -> list[list[dict]]:
    rng = np.random.default_rng(0)
    return [round_reports(rng, r, clients) for r in range(min(rounds, DISTINCT_ROUNDS))]


def pg_url(pg_admin: str, name: str, driver: str = "postgresql+psycopg") -> str:
    return pg_admin.rsplit("/", 1)[0].replace("postgresql://", f"{driver}://") + f"/{name}"


class PgDatabase:
    """A fresh PostgreSQL database for one measurement, dropped afterwards."""

    def __init__(self, pg_admin: str) -> None:
        import psycopg

        self.admin = pg_admin
        self.name = f"fedsentinel_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(pg_admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')

    def drop(self) -> None:
        import psycopg

        with psycopg.connect(self.admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


# -- the service, through the SDK ---------------------------------------------------


def peak_rss_bytes(pid: int) -> int:
    """VmHWM of the server and its children (uvicorn workers)."""
    total = 0
    children = subprocess.run(
        ["pgrep", "-P", str(pid)], capture_output=True, text=True
    ).stdout.split()
    for p in [pid, *map(int, children)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) * 1024
        except FileNotFoundError:
            pass
    return total


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_service(
    db: str, rounds: int, clients: int, batch: int, pg_admin: str, encoding: str
) -> dict:
    """The service on this process's code (``sys.path``), driven by this process's SDK."""
    from collectors import MonitorClient
    from monitor.server import free_port

    data_dir = Path(tempfile.mkdtemp(prefix="fs-bench-"))
    env = {**os.environ, "FEDSENTINEL_DATA_DIR": str(data_dir), "FEDSENTINEL_LOG_LEVEL": "warning"}
    pg = PgDatabase(pg_admin) if db == "postgresql" else None
    if pg:
        env["FEDSENTINEL_DATABASE_URL"] = pg_url(pg_admin, pg.name)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "monitor", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    sdk_options = {} if encoding == "json" else {"encoding": "packed", "packed_dtype": "float32"}
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        data = payloads(rounds, clients)
        ingest: list[float] = []
        closes: list[float] = []
        service_cpu = sdk_cpu = 0.0
        with MonitorClient(url, batch_size=batch, timeout_seconds=120, **sdk_options) as sdk:
            sdk.register_run(run_spec("bench", clients))
            start = time.perf_counter()
            for rnd in range(1, rounds + 1):
                c0, s0, t0 = cpu_seconds(proc.pid), time.process_time(), time.perf_counter()
                sdk.report("bench", rnd, data[rnd % len(data)])
                t1 = time.perf_counter()
                service_cpu += cpu_seconds(proc.pid) - c0
                sdk_cpu += time.process_time() - s0
                sdk.close_round("bench", rnd, {"global_eval_accuracy": 0.8, "num_sampled": clients})
                ingest.append(t1 - t0)
                closes.append(time.perf_counter() - t1)
            elapsed = time.perf_counter() - start
        peak = peak_rss_bytes(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if pg:
            pg.drop()
    return {
        "ingest_rps": rounds * clients / sum(ingest),
        "e2e_rps": rounds * clients / elapsed,
        "close_median_ms": 1000 * statistics.median(closes),
        "service_cpu_ms": 1e6 * service_cpu / (rounds * clients),
        "sdk_cpu_ms": 1e6 * sdk_cpu / (rounds * clients),
        "peak_rss_mib": peak / 2**20,
    }


def service_in_child(code_root: Path, db: str, encoding: str, args: argparse.Namespace) -> dict:
    """Run :func:`bench_service` in a child whose imports resolve to ``code_root``."""
    out = Path(tempfile.mkstemp(prefix="fs-bench-", suffix=".json")[1])
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        str(out),
        "--db",
        db,
        "--encoding",
        encoding,
        "--rounds",
        str(args.rounds),
        "--clients",
        str(args.clients),
        "--batch",
        str(args.batch),
        "--pg-admin",
        args.pg_admin,
    ]
    env = {**os.environ, "PYTHONPATH": str(code_root)}
    subprocess.run(command, cwd=code_root, env=env, check=True)
    result = json.loads(out.read_text())
    out.unlink()
    return result


# -- the floor: parse the same bodies, bulk insert the same rows ----------------------


def sdk_bodies(data: list[list[dict]], batch: int, encoding: str) -> list[list[bytes]]:
    """The request bodies the SDK sends, per distinct round (encoded with the SDK's own code)."""
    from collectors.client import encode_body, encode_packed_reports

    def encode(reports: list[dict]) -> bytes:
        body = {"reports": reports}
        return encode_body(body) if encoding == "json" else encode_packed_reports(body, "<f4")

    return [[encode(rs[i : i + batch]) for i in range(0, len(rs), batch)] for rs in data]


def _block(reports: list[dict], key: str, packed: bool) -> np.ndarray:
    if packed:
        raw = b"".join(base64.b64decode(r[key]["data"]) for r in reports)
        return (
            np.frombuffer(raw, dtype=reports[0][key]["dtype"])
            .astype("<f8")
            .reshape(len(reports), -1)
        )
    return np.array([r[key] for r in reports], dtype="<f8").reshape(len(reports), -1)


def floor_rows(body: bytes, rnd: int, received: object, packed: bool) -> list[tuple]:
    """Parse one body and build its rows: no validation, no hashing, nothing the floor can skip."""
    reports = orjson.loads(body)["reports"]
    sketch, labels, features = (
        _block(reports, k, packed)
        for k in ("update_sketch", "label_histogram", "feature_histograms")
    )
    return [
        (
            "bench",
            rnd,
            r["client_id"],
            received,
            "0" * 64,
            r.get("status", "ok"),
            r["num_examples"],
            r["train_loss"],
            r["train_accuracy"],
            r["eval_loss"],
            r["eval_accuracy"],
            r["wall_time_seconds"],
            r["update_norm"],
            sketch[i].tobytes(),
            labels[i].tobytes(),
            features[i].tobytes(),
            r["clipped"],
        )
        for i, r in enumerate(reports)
    ]


FLOOR_COLUMNS = (
    "run_id, round, client_id, received_at, content_hash, status, num_examples, train_loss, "
    "train_accuracy, eval_loss, eval_accuracy, wall_time_seconds, update_norm, update_sketch, "
    "label_histogram, feature_histograms, clipped"
)


def bench_floor(
    db: str, rounds: int, bodies: list[list[bytes]], clients: int, pg_admin: str, encoding: str
) -> dict:
    """Parse + bulk insert, into the service's own schema, with its durability settings."""
    from sqlmodel import SQLModel

    from monitor.store import Store

    packed = encoding != "json"
    marks = ", ".join(["?" if db == "sqlite" else "%s"] * len(FLOOR_COLUMNS.split(",")))
    sql = f"INSERT INTO client_report ({FLOOR_COLUMNS}) VALUES ({marks})"
    pg = PgDatabase(pg_admin) if db == "postgresql" else None
    path = Path(tempfile.mkdtemp(prefix="fs-floor-")) / "floor.db"
    url = pg_url(pg_admin, pg.name) if pg else f"sqlite:///{path}"
    store = Store(url)
    SQLModel.metadata.create_all(store.write_engine)
    store.dispose()
    try:
        if pg:
            import psycopg

            conn = psycopg.connect(pg_url(pg_admin, pg.name, "postgresql"))
        else:
            import sqlite3

            conn = sqlite3.connect(path, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")  # the service's default
        received = datetime.now(UTC) if pg else datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
        start, cpu = time.perf_counter(), time.process_time()
        for rnd in range(1, rounds + 1):
            for body in bodies[rnd % len(bodies)]:
                rows = floor_rows(body, rnd, received, packed)
                if pg:
                    with conn.cursor() as cur:
                        cur.executemany(sql, rows)
                    conn.commit()
                else:
                    conn.execute("BEGIN IMMEDIATE")
                    conn.executemany(sql, rows)
                    conn.execute("COMMIT")
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        conn.close()
    finally:
        if pg:
            pg.drop()
    return {"floor_rps": rounds * clients / elapsed, "floor_cpu_ms": 1e6 * cpu / (rounds * clients)}


# -- the session: interleaved repeats, medians, the table ------------------------------


def _median(results: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in results)


def _spread(results: list[dict], key: str) -> str:
    values = sorted(r[key] for r in results)
    return f"{values[0]:,.0f}-{values[-1]:,.0f}" if len(values) > 1 else ""


def session(args: argparse.Namespace) -> str:
    """Every measurement for every store, repeats interleaved; the markdown table."""
    from rich.console import Console

    console = Console()
    data = payloads(args.rounds, args.clients)
    encodings = args.encoding or ["json", "packed"]
    bodies = {e: sdk_bodies(data, args.batch, e) for e in encodings}
    load_before = os.getloadavg()
    results: dict[tuple[str, str, str], list[dict]] = {}
    for repeat in range(args.repeats):
        for db in args.db or ["sqlite"]:
            plan = [("floor", e) for e in encodings] + [("service", e) for e in encodings]
            if args.baseline:
                plan.append(("baseline", "json"))
            for what, encoding in plan:
                console.print(
                    f"[bold]repeat {repeat + 1}/{args.repeats}[/] {db}: {what} ({encoding})"
                )
                if what == "floor":
                    result = bench_floor(
                        db, args.rounds, bodies[encoding], args.clients, args.pg_admin, encoding
                    )
                else:
                    root = ROOT if what == "service" else Path(args.baseline)
                    result = service_in_child(root, db, encoding, args)
                console.print(result)
                results.setdefault((db, what, encoding), []).append(result)
    load_after = os.getloadavg()
    return table(args, results, load_before, load_after)


def table(args: argparse.Namespace, results: dict, load_before: tuple, load_after: tuple) -> str:
    dbs = sorted({k[0] for k in results}, key=["sqlite", "postgresql"].index)
    lines = [
        f"Ingest, {args.rounds} rounds x {args.clients:,} clients, SDK batches of {args.batch}, one uvicorn "
        f"worker ({N_CLASSES} classes, {N_FEATURES}x{N_BINS} feature bins, {SKETCH_DIM}-float sketch); "
        f"medians of {args.repeats} interleaved repeats (range in brackets); "
        f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after on {os.cpu_count()} cores "
        "(a shared machine: SDK, service and other work compete for the same cores).",
        "",
        "| store | what | encoding | ingest reports/s | share of floor | CPU ms per 1,000 reports: service + SDK | end to end reports/s (with closes) | close median (ms) | peak RSS (MiB) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for db in dbs:
        floors = {
            e: _median(results[(db, "floor", e)], "floor_rps")
            for (d, w, e) in results
            if d == db and w == "floor"
        }
        for (d, what, encoding), rs in results.items():
            if d != db:
                continue
            if what == "floor":
                lines.append(
                    f"| {db} | floor: parse + bulk insert | {encoding} | {floors[encoding]:,.0f} "
                    f"({_spread(rs, 'floor_rps')}) | 1 | {_median(rs, 'floor_cpu_ms'):.0f} | | | |"
                )
                continue
            ingest = _median(rs, "ingest_rps")
            share = ingest / floors[encoding] if encoding in floors else float("nan")
            label = (
                "service (this tree)"
                if what == "service"
                else f"baseline ({Path(args.baseline).name})"
            )
            lines.append(
                f"| {db} | {label} | {encoding} | {ingest:,.0f} ({_spread(rs, 'ingest_rps')}) | {share:.2f} | "
                f"{_median(rs, 'service_cpu_ms'):.0f} + {_median(rs, 'sdk_cpu_ms'):.0f} | "
                f"{_median(rs, 'e2e_rps'):,.0f} ({_spread(rs, 'e2e_rps')}) | {_median(rs, 'close_median_ms'):.0f} | "
                f"{_median(rs, 'peak_rss_mib'):.0f} |"
            )
        if args.baseline:
            old = results[(db, "baseline", "json")]
            for encoding in ("json", "packed"):
                new = results.get((db, "service", encoding))
                if new:
                    lines.append(
                        f"| {db} | speed-up over the baseline | {encoding} | "
                        f"{_median(new, 'ingest_rps') / _median(old, 'ingest_rps'):.2f}x | | | "
                        f"{_median(new, 'e2e_rps') / _median(old, 'e2e_rps'):.2f}x | | |"
                    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument(
        "--batch", type=int, default=500, help="SDK batch size (reports per request)"
    )
    parser.add_argument("--db", action="append", choices=["sqlite", "postgresql"])
    parser.add_argument(
        "--encoding",
        action="append",
        choices=["json", "packed"],
        help="SDK encodings to measure (default both; packed = float32)",
    )
    parser.add_argument(
        "--baseline", type=Path, help="another checkout (e.g. the previous main) to measure alike"
    )
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--pg-admin", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--out", type=Path, default=Path("bench/results/ingest.md"))
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:  # one service measurement, on whatever code PYTHONPATH points at
        result = bench_service(
            args.db[0], args.rounds, args.clients, args.batch, args.pg_admin, args.encoding[0]
        )
        args.child.write_text(json.dumps(result))
        return
    text = session(args)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
