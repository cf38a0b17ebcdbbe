"""Benchmark: seconds per FL round, batched (vmap) vs sequential training, and peak memory.

Workload (issue 3): digits, MLP 64-64-10, IID, every client trains every round,
one local epoch, batch 16, for 10, 100 and 1,000 clients. Each (clients, engine)
pair runs in a fresh subprocess so its peak RSS (``resource.getrusage``
``ru_maxrss``) is its own. One warm-up round, then the median of ``--rounds``
rounds of

* ``train``: local training of all clients (the part the engines differ in);
* ``round``: the whole simulated round: sampling, faults, training, update
  norms and sketches, histograms, evaluation, aggregation, building the reports.

Flower's simulation engine on the same workload is measured only when ``flwr``
is importable; otherwise the table says so. Run by hand::

    python bench/bench_simulator.py            # prints a markdown table
                                               # and writes bench/results/simulator.md
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "simulator.md"
CLIENTS = (10, 100, 1000)


def _scenario(num_clients: int, engine: str):
    from simulator.scenario import Scenario

    return Scenario(
        run_id=f"bench-{num_clients}",
        dataset="digits",
        partition="iid",
        num_clients=num_clients,
        rounds=1000,
        model="mlp",
        hidden=[64],
        local_epochs=1,
        batch_size=16,
        sample_fraction=1.0,
        centralized_baseline=False,
        engine=engine,
    )


def measure_one(num_clients: int, engine: str, rounds: int, threads: int | None) -> dict:
    """Run in a subprocess: warm-up + ``rounds`` rounds; medians and this process's peak RSS."""
    import torch

    if threads:
        torch.set_num_threads(threads)

    from simulator.simulation import Simulation

    sim = Simulation(_scenario(num_clients, engine))
    sim.run_round(1)  # warm-up (vmap tracing, allocator)
    round_s, train_s = [], []
    for r in range(2, rounds + 2):
        t0 = time.perf_counter()
        out = sim.run_round(r)
        round_s.append(time.perf_counter() - t0)
        train_s.append(out.train_seconds)
    return {
        "clients": num_clients,
        "engine": engine,
        "round_s": statistics.median(round_s),
        "train_s": statistics.median(train_s),
        "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": torch.get_num_threads(),
        "accuracy": sim.global_eval()[1],
    }


def flower_available() -> bool:
    try:
        import flwr  # noqa: F401
    except ImportError:
        return False
    return True


def _subprocess(num_clients: int, engine: str, rounds: int, threads: int | None) -> dict:
    cmd = [sys.executable, __file__, "--one", str(num_clients), engine, "--rounds", str(rounds)]
    if threads:
        cmd += ["--threads", str(threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def render(rows: list[dict], rounds: int, flower_note: str) -> str:
    by = {(r["clients"], r["engine"]): r for r in rows}
    lines = [
        "# Simulator benchmark",
        "",
        f"digits, MLP 64-64-10, IID, all clients every round, 1 local epoch, batch 16; "
        f"median of {rounds} rounds after one warm-up; each cell a fresh process. "
        f"{platform.processor() or platform.machine()}, torch threads {rows[0]['threads']}, "
        f"Python {platform.python_version()}.",
        "",
        "| clients | sequential train s | batched train s | train speed-up | sequential round s | batched round s | round speed-up | peak RSS batched MiB | peak RSS sequential MiB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in CLIENTS:
        s, b = by[(n, "sequential")], by[(n, "batched")]
        lines.append(
            f"| {n:,} | {s['train_s']:.4f} | {b['train_s']:.4f} | {s['train_s'] / b['train_s']:.1f}x "
            f"| {s['round_s']:.4f} | {b['round_s']:.4f} | {s['round_s'] / b['round_s']:.1f}x "
            f"| {b['maxrss_mib']:.0f} | {s['maxrss_mib']:.0f} |"
        )
    lines += [
        "",
        "*train*: local training of every client; *round*: the whole simulated round "
        "(training plus statistics, sketches, histograms, evaluation, aggregation, reports).",
        "",
        f"Flower simulation engine: {flower_note}",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--one", nargs=2, metavar=("CLIENTS", "ENGINE"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch threads (default 1: stable on a small shared machine; 0 = torch's choice)",
    )
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.one:
        print(json.dumps(measure_one(int(args.one[0]), args.one[1], args.rounds, args.threads)))
        return
    rows = []
    for n in CLIENTS:
        for engine in ("sequential", "batched"):
            rows.append(_subprocess(n, engine, args.rounds, args.threads))
            print(f"  {n:>5} clients {engine:<10} round {rows[-1]['round_s']:.4f} s", file=sys.stderr)
    flower_note = (
        "flwr is importable but this script does not drive it yet; not measured."
        if flower_available()
        else "skipped: `flwr` is not installed (`pip install 'fedsentinel[flower]'`)."
    )
    table = render(rows, args.rounds, flower_note)
    print(table)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(table, encoding="utf-8")


if __name__ == "__main__":
    main()
