"""Benchmark: the simulator at 1,000 and 10,000 clients of log-normal sizes, batched vs sequential.

Workload (issue 15): FedProx's Synthetic(1, 1) with its natural split, one client
per generated user, ``n_k = int(LogNormal(4, 2)) + 50`` rows (median ~105, the
largest of 10,000 clients ~10^5), logistic regression 60 -> 10, every client
trains every round, one local epoch, batch 16, FedAvg. Each (clients, engine)
pair runs in a fresh subprocess so its peak RSS (``ru_maxrss``) is its own:

* ``build``: generating the data and the federation;
* ``train`` / ``round``: local training of every client / the whole simulated round
  (median over the measured rounds, after one warm-up round that is also measured
  for the sequential engine at 10,000 clients, where a round takes minutes);
* ``rss after build`` and ``peak rss``: the process' peak resident memory before
  the first round and at the end;
* ``schedule``: bytes of the round's training schedule as stored now (each client's
  own steps back to back) and as the previous dense ``[K, max steps, B]`` layout,
  which padded every client to the largest, would have needed;
* agreement: the largest absolute difference between the batched and the
  sequential global model after the first round (same seed, same schedule).

Run by hand (minutes; the 10,000-client sequential round dominates)::

    python -m bench.bench_simulator_scale            # writes bench/results/simulator_scale.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "simulator_scale.md"
CLIENTS = (1000, 10000)


def _scenario(num_clients: int, engine: str):
    from simulator.scenario import Scenario

    return Scenario(
        run_id=f"scale-{num_clients}",
        dataset="synthetic",
        partition="natural",
        num_clients=num_clients,
        rounds=1000,
        model="logreg",
        local_epochs=1,
        batch_size=16,
        lr=0.05,
        sample_fraction=1.0,
        centralized_baseline=False,
        engine=engine,
    )


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_one(num_clients: int, engine: str, rounds: int, model_out: Path) -> dict:
    """In a subprocess: build, ``rounds`` rounds (the first also saved for the agreement check)."""
    import numpy as np
    import torch

    from simulator.models import flatten
    from simulator.simulation import Simulation

    # One intra-op thread: on a loaded 2-core VM two OpenMP threads spin against other
    # processes and made a batched step ~10x slower (measured: 18 s vs 1.8 s at 200 clients).
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    sim = Simulation(_scenario(num_clients, engine))
    build_s = time.perf_counter() - t0
    rss_build = _rss_mib()
    sizes = np.array([len(y) for y in sim.fed.y_train])
    batches = -(-sizes // 16)
    width = int(min(16, sizes.max()))
    schedule_bytes = int(batches.sum()) * width * (8 + 4)
    dense_bytes = len(sizes) * int(batches.max()) * width * (8 + 4)
    round_s, train_s = [], []
    for r in range(1, rounds + 1):
        t = time.perf_counter()
        out = sim.run_round(r)
        round_s.append(time.perf_counter() - t)
        train_s.append(out.train_seconds)
        if r == 1:
            np.save(model_out, flatten(sim.global_params).numpy())
    measured = slice(1, None) if rounds > 1 else slice(0, None)
    return {
        "clients": num_clients,
        "engine": engine,
        "rows": int(sizes.sum()),
        "largest": int(sizes.max()),
        "median_rows": float(np.median(sizes)),
        "build_s": build_s,
        "round_s": statistics.median(round_s[measured]),
        "train_s": statistics.median(train_s[measured]),
        "rounds_measured": len(round_s[measured]),
        "rss_build_mib": rss_build,
        "peak_rss_mib": _rss_mib(),
        "schedule_bytes": schedule_bytes,
        "dense_schedule_bytes": dense_bytes,
        "threads": torch.get_num_threads(),
    }


def _rounds(clients: int, engine: str) -> int:
    if engine == "batched":
        return 4 if clients <= 1000 else 2
    return 3 if clients <= 1000 else 1


def run_all(clients: tuple[int, ...], out_dir: Path) -> list[dict]:
    import numpy as np

    rows = []
    for n in clients:
        models = {}
        for engine in ("batched", "sequential"):
            path = out_dir / f"model-{n}-{engine}.npy"
            print(f"{n} clients, {engine} ...", file=sys.stderr, flush=True)
            cmd = [sys.executable, "-m", "bench.bench_simulator_scale", "--one", str(n), engine,
                   str(_rounds(n, engine)), str(path)]  # fmt: skip
            done = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
            row = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"  {row}", file=sys.stderr, flush=True)
            rows.append(row)
            models[engine] = np.load(path)
        diff = float(np.abs(models["batched"] - models["sequential"]).max())
        for row in rows[-2:]:
            row["max_abs_diff"] = diff
    return rows


def render(rows: list[dict]) -> str:
    by = {(r["clients"], r["engine"]): r for r in rows}
    lines = [
        "# Simulator at scale: 1,000 and 10,000 clients of log-normal sizes",
        "",
        f"`python -m bench.bench_simulator_scale` on {platform.machine()} Linux, Python "
        f"{platform.python_version()}, torch threads {rows[0]['threads']}; a shared 2-core VM that "
        "other processes were loading (medians; figures move between runs, ratios less).",
        "",
        "Synthetic(1, 1), natural split (n_k = int(LogNormal(4, 2)) + 50), logistic regression, "
        "FedAvg, one local epoch, batch 16, every client trains every round.",
        "",
        "| clients | rows (median / largest client) | engine | build (s) | train (s/round) | whole round (s) "
        "| RSS after build / peak (MiB) | schedule now / dense padded (MiB) | max abs diff vs other engine |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for (n, engine), r in sorted(by.items()):
        lines.append(
            f"| {n:,} | {r['rows']:,} ({r['median_rows']:.0f} / {r['largest']:,}) | {engine} "
            f"| {r['build_s']:.1f} | {r['train_s']:.2f} | {r['round_s']:.2f} "
            f"| {r['rss_build_mib']:.0f} / {r['peak_rss_mib']:.0f} "
            f"| {r['schedule_bytes'] / 2**20:.1f} / {r['dense_schedule_bytes'] / 2**20:,.0f} "
            f"| {r['max_abs_diff']:.1e} |"
        )
    lines.append("")
    for n in sorted({r["clients"] for r in rows}):
        b, s = by[(n, "batched")], by[(n, "sequential")]
        lines.append(
            f"- {n:,} clients: batched training {s['train_s'] / b['train_s']:.1f}x faster than "
            f"sequential ({b['rounds_measured']} / {s['rounds_measured']} rounds measured)."
        )
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", nargs=4, metavar=("CLIENTS", "ENGINE", "ROUNDS", "MODEL_OUT"))
    parser.add_argument("--clients", type=int, nargs="+", default=list(CLIENTS))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.one:
        n, engine, rounds, out = args.one
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        print(json.dumps(measure_one(int(n), engine, int(rounds), Path(out))))
        return
    import tempfile

    with tempfile.TemporaryDirectory(prefix="fedsentinel-simscale-") as tmp:
        rows = run_all(tuple(args.clients), Path(tmp))
    text = render(rows)
    print(text)
    if not args.no_write:
        RESULTS.write_text(text)
        (RESULTS.with_suffix(".json")).write_text(json.dumps(rows, indent=1) + "\n")
        print(f"wrote {RESULTS}", file=sys.stderr)


if __name__ == "__main__":
    main()
