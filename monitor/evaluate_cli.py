"""``fedsentinel evaluate``: the detection-quality benchmark (issue 4).

The command only: the grid is :mod:`monitor.evaluation.grid`, running a case
:mod:`monitor.evaluation.runner`, scoring :mod:`monitor.evaluation.scoring`,
the report :mod:`monitor.evaluation.render`. Writes a markdown report, JSON
with every run's metrics and a PNG plot.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import click

from monitor.evaluation.grid import CONDITIONS, SEVERITY, Case, build_cases, full_grid, quick_grid
from monitor.evaluation.render import (
    print_table,
    render_markdown,
    write_json,
    write_markdown,
    write_plot,
)
from monitor.evaluation.runner import quiet_logs, result_from_dict, run_grid
from monitor.evaluation.scoring import summaries


def _csv(kind: type, text: str) -> list:
    return [kind(v) for v in text.split(",") if v.strip()]


def _range(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition("-")
    a, b = int(lo), int(hi or lo)
    if a > b:
        raise click.BadParameter(f"{text}: expected LOW-HIGH")
    return a, b


@click.command()
@click.option(
    "--kinds", default="all", show_default=True, help="Comma-separated fault kinds, or 'all'."
)
@click.option(
    "--alphas", default="0.1,0.5,100", show_default=True, help="Dirichlet alphas (label skew)."
)
@click.option("--seeds", default="0,1,2", show_default=True, help="Comma-separated seeds.")
@click.option(
    "--clients",
    default="20-50",
    show_default=True,
    help="Clients per run, drawn uniformly in LOW-HIGH.",
)
@click.option("--rounds", type=click.IntRange(2), default=30, show_default=True)
@click.option(
    "--onset",
    default="8-15",
    show_default=True,
    help="Fault onset round, drawn uniformly in LOW-HIGH.",
)
@click.option(
    "--healthy/--no-healthy",
    default=True,
    show_default=True,
    help="Add one healthy run per alpha and seed.",
)
@click.option(
    "--quick",
    is_flag=True,
    help="A small grid for CI: every kind, several faults, healthy, alpha 0.5, seed 0, 20-25 clients, "
    "20 rounds; dropout and healthy under half participation.",
)
@click.option(
    "--full",
    is_flag=True,
    help="The full grid (monitor.evaluation.grid.full_grid): conditions, 200 and 1,000 clients, "
    "and held-out seeds; ~22 min with --jobs 2 on a 2-core VM.",
)
@click.option(
    "--condition",
    type=click.Choice(sorted(CONDITIONS)),
    default="full",
    show_default=True,
    help="Participation / noise / size condition of a custom grid.",
)
@click.option(
    "--held-out-seeds",
    default="",
    help="Also run the grid on these seeds and report them apart (seeds not tuned on).",
)
@click.option(
    "--jobs",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Runs in parallel (spawned processes, each with its own service and store).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write evaluation.md, evaluation.json and evaluation.png here "
    "(default: docs/evaluation.md, docs/evaluation.png, bench/results/evaluation.json).",
)
def evaluate(
    kinds: str,
    alphas: str,
    seeds: str,
    clients: str,
    rounds: int,
    onset: str,
    healthy: bool,
    quick: bool,
    full: bool,
    condition: str,
    held_out_seeds: str,
    jobs: int,
    out: Path | None,
) -> None:
    """Detection-quality benchmark: inject faults, run them through the real service, score the findings."""
    from rich.console import Console

    from simulator.scenario import FAULT_KINDS

    quiet_logs()
    graded = [k for k in FAULT_KINDS if k in SEVERITY]  # the kinds this grid places and grades
    kind_list = graded if kinds == "all" else _csv(str, kinds)
    unknown = [k for k in kind_list if k not in graded]
    if unknown:
        raise click.BadParameter(
            f"unknown fault kind(s) {', '.join(unknown)}; valid: {', '.join(graded)}"
        )
    held: list[Case] = []
    if full:
        cases, held = full_grid(kind_list)
        grid = (
            f"full grid, {len(kind_list)} fault kinds + several faults + healthy: alpha {{0.1, 0.5, 100}} x "
            "seeds {0, 1, 2} at full participation; alpha 0.5 seed 0 under partial participation "
            "(0.5 and 0.3 with timeouts, 0.5 omitting) and local-DP histograms; 200 and 1,000 clients; "
            "held out: seeds {3, 4} and healthy 200/1,000-client runs with seed 3; 30 rounds, "
            "onset 8-15; logistic regression"
        )
    elif quick:
        cases = quick_grid(kind_list)
        grid = (
            f"quick grid: {len(kind_list)} kinds + several + healthy, alpha 0.5, seed 0, 20 rounds"
        )
    else:
        alpha_list, seed_list = _csv(float, alphas), _csv(int, seeds)
        client_range, onset_range = _range(clients), _range(onset)
        if onset_range[1] > rounds:
            raise click.BadParameter(f"onset {onset_range} is after the last round {rounds}")
        common = {"rounds": rounds, "clients": client_range, "onset": onset_range}
        cases = build_cases(
            kind_list, alpha_list, seed_list, healthy=healthy, condition=condition, **common
        )
        if held_out_seeds:
            held = build_cases(
                kind_list,
                alpha_list,
                _csv(int, held_out_seeds),
                healthy=healthy,
                condition=condition,
                **common,
            )
        grid = (
            f"{len(kind_list)} fault kinds x alpha {{{', '.join(f'{a:g}' for a in alpha_list)}}} x "
            f"{len(seed_list)} seed(s){' + healthy runs' if healthy else ''}; {client_range[0]}-{client_range[1]} "
            f"clients, {rounds} rounds, onset {onset_range[0]}-{onset_range[1]}, condition {condition}; "
            "digits, logistic regression"
        )
    console = Console(stderr=True)
    started = time.perf_counter()
    raw_all = _run_with_progress([*cases, *held], jobs, console)
    seconds = time.perf_counter() - started
    raw, raw_held = raw_all[: len(cases)], raw_all[len(cases) :]
    runs = [result_from_dict(r["result"]) for r in raw]
    held_runs = [result_from_dict(r["result"]) for r in raw_held]
    sums = summaries(runs, kind_list)
    meta = {
        "runs": len(cases) + len(held),
        "grid": grid,
        "seconds": seconds,
        "jobs": jobs,
        "machine": f"{os.cpu_count()} CPU(s)",
        "command": "fedsentinel evaluate"
        + (" --full" if full else " --quick" if quick else "")
        + (f" --jobs {jobs}" if jobs > 1 else ""),
    }
    print_table(sums, kind_list)
    md_path = (out / "evaluation.md") if out else Path("docs/evaluation.md")
    json_path = (out / "evaluation.json") if out else Path("bench/results/evaluation.json")
    png_path = (out / "evaluation.png") if out else Path("docs/evaluation.png")
    write_markdown(md_path, render_markdown(sums, runs, meta, kind_list, held_runs))
    write_json(json_path, meta, sums, raw_all, kind_list, runs, held_runs)
    write_plot(png_path, sums, kind_list)
    console.print(f"{len(cases)} runs in {seconds:.0f} s; wrote {md_path}, {json_path}, {png_path}")


def _run_with_progress(cases: list[Case], jobs: int, console: Any) -> list[dict[str, Any]]:
    """Run the grid with a progress bar that names each finished run and its score."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("[bold]evaluate"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        task = bar.add_task("", total=len(cases))

        def done(case: Case, res: dict[str, Any]) -> None:
            r = res["result"]
            hit = sum(p["detected"] for p in r["pairs"])
            bar.update(
                task,
                advance=1,
                description=f"{case.run_id}: {hit}/{len(r['pairs'])} found, {r['false_alarms']} false alarms",
            )

        return run_grid(cases, jobs=jobs, on_done=done)
