"""Benchmark: seconds per FL round, batched (vmap) vs sequential training, and peak memory.

Workload (issue 3): digits, MLP 64-64-10, IID, every client trains every round,
one local epoch, batch 16, for 10, 100 and 1,000 clients. Each (clients, engine)
pair runs in a fresh subprocess so its peak RSS (``resource.getrusage``
``ru_maxrss``) is its own. One warm-up round, then the median of ``--rounds``
rounds of

* ``train``: local training of all clients (the part the engines differ in);
* ``round``: the whole simulated round: sampling, faults, training, update
  norms and sketches, histograms, evaluation, aggregation, building the reports.

Flower's simulation engine (``run_simulation``, Ray backend) on the same
workload is measured only when ``flwr`` is importable; otherwise the table says
so. At 1,000 clients a Flower round takes tens of seconds here, so Flower gets
fewer rounds (``FLOWER_ROUNDS``). Run by hand::

    python bench/bench_simulator.py            # prints a markdown table
                                               # and writes bench/results/simulator.md
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


def measure_flower(num_clients: int, rounds: int, threads: int | None) -> dict:
    """The same workload on Flower's simulation engine (Ray backend), FedAvg, no client evaluation.

    Each ClientApp call trains one client with plain PyTorch SGD on the same
    partition the simulator builds. The seconds between consecutive server-side
    ``evaluate_fn`` calls (one per round) are the round times; the first round,
    which starts the actors, is left out of the median.
    """
    import torch
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    from simulator.models import make_model
    from simulator.simulation import build_federation

    scenario = _scenario(num_clients, "sequential")
    cache: dict = {}

    def federation():
        if "fed" not in cache:
            if threads:
                torch.set_num_threads(threads)
            cache["fed"] = build_federation(scenario)
        return cache["fed"]

    client_app = ClientApp()

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        fed = federation()
        k = int(context.node_config["partition-id"])
        model = make_model("mlp", 64, 10, [64])
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        x, y = torch.from_numpy(fed.x_train[k]), torch.from_numpy(fed.y_train[k])
        opt = torch.optim.SGD(model.parameters(), lr=scenario.lr)
        for batch in torch.randperm(len(y)).split(scenario.batch_size):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            opt.step()
        content = RecordDict(
            {
                "arrays": ArrayRecord(model.state_dict()),
                "metrics": MetricRecord({"num-examples": len(y)}),
            }
        )
        return Message(content=content, reply_to=msg)

    stamps: list[float] = []
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = FedAvg(
            fraction_train=1.0,
            fraction_evaluate=0.0,
            min_train_nodes=num_clients,
            min_available_nodes=num_clients,
        )

        def evaluate_fn(server_round: int, arrays: ArrayRecord):
            stamps.append(time.perf_counter())
            return MetricRecord({"round": server_round})

        model = make_model("mlp", 64, 10, [64], seed=scenario.seed)
        strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(model.state_dict()),
            num_rounds=rounds + 1,
            evaluate_fn=evaluate_fn,
        )

    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=num_clients,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
    )
    per_round = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    return {
        "clients": num_clients,
        "engine": "flower",
        "round_s": statistics.median(per_round[1:] or per_round),
        "rounds_measured": len(per_round[1:] or per_round),
    }


def flower_available() -> bool:
    try:
        import flwr  # noqa: F401
    except ImportError:
        return False
    return True


MARK = "BENCH-JSON "
FLOWER_ROUNDS = {10: 3, 100: 2, 1000: 1}  # Flower at 1,000 clients takes ~20 s a round here


def _subprocess(
    num_clients: int, engine: str, rounds: int, threads: int | None, timeout: float = 900
) -> dict:
    cmd = [sys.executable, __file__, "--one", str(num_clients), engine, "--rounds", str(rounds)]
    if threads:
        cmd += ["--threads", str(threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT, timeout=timeout)
    line = next(ln for ln in reversed(out.stdout.splitlines()) if ln.startswith(MARK))
    return json.loads(line.removeprefix(MARK))


def render(
    rows: list[dict], rounds: int, flower_note: str, flower: dict[int, dict] | None = None
) -> str:
    by = {(r["clients"], r["engine"]): r for r in rows}
    lines = [
        "# Simulator benchmark",
        "",
        f"digits, MLP 64-64-10, IID, all clients every round, 1 local epoch, batch 16; "
        f"median of {rounds} rounds after one warm-up; each cell a fresh process. "
        f"{platform.processor() or platform.machine()}, torch threads {rows[0]['threads']}, "
        f"Python {platform.python_version()}; 1-min load average {os.getloadavg()[0]:.1f} "
        "at the end (other jobs share this machine: expect noise).",
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
    if flower:
        lines += [
            "",
            "| clients | Flower round s | batched round s | batched speed-up over Flower |",
            "|---:|---:|---:|---:|",
        ]
        for n, f in sorted(flower.items()):
            b = by[(n, "batched")]
            lines.append(
                f"| {n:,} | {f['round_s']:.3f} | {b['round_s']:.4f} | {f['round_s'] / b['round_s']:.0f}x |"
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
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--one", nargs=2, metavar=("CLIENTS", "ENGINE"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: stable on a small shared machine; 0 = torch's choice)",
    )
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument(
        "--no-flower", action="store_true", help="skip Flower even when flwr is installed"
    )
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.one:
        n, engine = int(args.one[0]), args.one[1]
        if engine == "flower":
            row = measure_flower(n, args.rounds, args.threads)
        else:
            row = measure_one(n, engine, args.rounds, args.threads)
        print(MARK + json.dumps(row))
        return
    rows = []
    for n in CLIENTS:
        for engine in ("sequential", "batched"):
            rows.append(_subprocess(n, engine, args.rounds, args.threads))
            print(
                f"  {n:>5} clients {engine:<10} round {rows[-1]['round_s']:.4f} s", file=sys.stderr
            )
    flower: dict[int, dict] = {}
    if args.no_flower:
        flower_note = "skipped (--no-flower)."
    elif not flower_available():
        flower_note = "skipped: `flwr` is not installed (`pip install 'fedsentinel[flower]'`)."
    else:
        import flwr

        for n in CLIENTS:
            try:
                flower[n] = _subprocess(n, "flower", FLOWER_ROUNDS[n], args.threads)
                print(
                    f"  {n:>5} clients flower     round {flower[n]['round_s']:.4f} s",
                    file=sys.stderr,
                )
            except (subprocess.SubprocessError, StopIteration) as exc:
                print(f"  {n:>5} clients flower     failed: {exc}", file=sys.stderr)
        flower_note = (
            f"flwr {flwr.__version__}, `run_simulation` on the Ray backend (1 CPU per client actor), "
            "FedAvg, same partition, plain PyTorch SGD per client; median of the rounds after the first "
            f"({', '.join(f'{n:,}: {FLOWER_ROUNDS[n]}' for n in CLIENTS)} rounds), Ray start-up excluded."
        )
    table = render(rows, args.rounds, flower_note, flower)
    print(table)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(table, encoding="utf-8")


if __name__ == "__main__":
    main()
