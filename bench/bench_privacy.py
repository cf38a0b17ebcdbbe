"""Detection under privacy: drift detection vs telemetry budget, and the scalar-only (secure aggregation) mode.

Reuses the detection benchmark (``monitor.evaluation``: grid, runner, scoring):
each case is simulated and sent through a real in-process service, its
findings scored against the injected ground truth. Cases of one fault, alpha
and seed share their clients, onset and faulty clients, so the budgets and
modes are compared on the same federations.

``budget``: label drift (severities 0.25, 0.5, 1.0) with label histograms only
and with label + 64 feature histograms, covariate shift (severity 1.0, label +
feature histograms) and healthy runs, at telemetry budgets inf (no noise), 10,
3 and 1 (delta 1e-5, 30 rounds, every round a release), on 8-12 digits clients
(~110-180 training rows each). Writes bench/results/privacy_budget.json,
docs/privacy_detection.png and the results section of docs/privacy.md.

``scalars``: every fault kind of the detection benchmark plus healthy runs,
once with server-side sketches and once in secure-aggregation mode (client-side
norm, cosine to the previous global update, repeat flag; no sketch). Writes
bench/results/privacy_scalars.json and its section of docs/privacy.md.

    python -m bench.bench_privacy budget --jobs 2
    python -m bench.bench_privacy scalars --jobs 2
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from monitor.evaluation.grid import SEVERITY, Case
from monitor.evaluation.render import json_clean
from monitor.evaluation.runner import quiet_logs, result_from_dict, run_grid
from monitor.evaluation.scoring import KindSummary, RunResult, summarize

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "privacy.md"
BUDGETS = (math.inf, 10.0, 3.0, 1.0)
DRIFT_KINDS = frozenset({"label_drift", "feature_drift", "data_drift"})
WORKS_RECALL = 0.8
"""Detection "works" at a budget when recall is at least this."""


def _eps_label(eps: float) -> str:
    return "inf" if math.isinf(eps) else f"{eps:g}"


def budget_cases(seeds: Sequence[int], clients: tuple[int, int]) -> list[Case]:
    """The ``budget`` grid (see the module docstring)."""
    cases = []
    variants: list[tuple[str | None, float | None, str]] = [
        ("label_drift", sev, hist) for sev in (0.25, 0.5, 1.0) for hist in ("labels", "all")
    ]
    variants += [("covariate_shift", 1.0, "all"), (None, None, "labels"), (None, None, "all")]
    for fault, sev, hist in variants:
        for eps in BUDGETS:
            options: list[tuple[str, Any]] = [("histograms", hist)]
            if not math.isinf(eps):
                options.append(("telemetry_budget", {"epsilon": eps, "delta": 1e-5}))
            tag = f"{hist}-e{_eps_label(eps)}" + (f"-sev{sev:g}" if sev is not None else "")
            for seed in seeds:
                cases.append(Case(fault, 0.5, seed, 30, clients, (8, 15), sev, tuple(options), tag))
    return cases


def _group_key(case: Case) -> tuple[str, str, float, str]:
    opts = dict(case.options)
    eps = opts.get("telemetry_budget", {}).get("epsilon", math.inf)
    sev = case.severity if case.severity is not None else math.nan
    return (case.fault or "healthy", opts.get("histograms", "all"), eps, f"{sev:g}")


def _drift_false_alarms(run: RunResult) -> int:
    return sum(v for k, v in run.false_alarms_by_kind.items() if k in DRIFT_KINDS)


def summarize_budget(cases: Sequence[Case], runs: Sequence[RunResult]) -> list[dict[str, Any]]:
    groups: dict[tuple, list[RunResult]] = {}
    for case, run in zip(cases, runs, strict=True):
        groups.setdefault(_group_key(case), []).append(run)
    rows = []
    for (fault, hist, eps, sev), rs in groups.items():
        s: KindSummary = summarize(rs, fault)
        rows.append(
            {
                "fault": fault,
                "histograms": hist,
                "epsilon": eps,
                "severity": sev,
                "runs": s.runs,
                "pairs": s.pairs,
                "recall": s.recall,
                "median_delay_rounds": s.median_delay_rounds,
                "healthy_client_rounds": s.healthy_client_rounds,
                "false_alarms": s.false_alarms,
                "false_alarms_per_1000": s.false_alarms_per_1000,
                "drift_false_alarms": sum(_drift_false_alarms(r) for r in rs),
                "false_alarms_by_kind": s.false_alarms_by_kind,
            }
        )
    return rows


def _fmt(x: float, nd: int = 2) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def _smallest_working_budget(rows: list[dict[str, Any]]) -> str:
    """The smallest budget of the grid at which recall >= WORKS_RECALL (and at every larger one)."""
    ok = sorted(
        (r for r in rows if r["pairs"]), key=lambda r: r["epsilon"], reverse=True
    )  # inf first
    smallest = None
    for r in ok:
        if r["recall"] >= WORKS_RECALL:
            smallest = r["epsilon"]
        else:
            break
    if smallest is None:
        return "fails even without noise"
    below = [r for r in ok if r["epsilon"] < smallest]
    if not below:
        return f"works down to epsilon {_eps_label(smallest)} (the smallest tried)"
    nxt = max(below, key=lambda r: r["epsilon"])
    where = (
        "only without noise" if math.isinf(smallest) else f"down to epsilon {_eps_label(smallest)}"
    )
    return f"works {where}; at epsilon {_eps_label(nxt['epsilon'])} recall is {_fmt(nxt['recall'])}"


def render_budget(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        f"Grid: {meta['runs']} runs ({meta['grid']}); wall time {meta['seconds']:.0f} s with "
        f"{meta['jobs']} process(es) on a shared {meta['machine']} machine (loaded by other jobs). "
        f"Generated by `{meta['command']}`; every run in `bench/results/privacy_budget.json`.",
        "",
        "| fault | histograms | severity | budget epsilon | runs | recall | median delay | "
        "false alarms / 1,000 healthy client-rounds (drift kinds) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    order = sorted(rows, key=lambda r: (r["fault"], r["histograms"], r["severity"], -r["epsilon"]))
    for r in order:
        drift_rate = 1000.0 * r["drift_false_alarms"] / max(r["healthy_client_rounds"], 1)
        lines.append(
            f"| {r['fault']} | {r['histograms']} | {r['severity'] if r['pairs'] else '-'} | "
            f"{_eps_label(r['epsilon'])} | {r['runs']} | {_fmt(r['recall'])} | "
            f"{_fmt(r['median_delay_rounds'], 0)} | {_fmt(r['false_alarms_per_1000'])} "
            f"({_fmt(drift_rate)}) |"
        )
    lines += [
        "",
        "Where drift detection stops (recall >= 0.8 at that budget and every larger one):",
        "",
    ]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        if r["pairs"]:
            groups.setdefault((r["fault"], r["histograms"], r["severity"]), []).append(r)
    for (fault, hist, sev), rs in sorted(groups.items()):
        lines.append(
            f"* {fault}, severity {sev}, {hist} histograms: {_smallest_working_budget(rs)}"
        )
    return "\n".join(lines) + "\n"


def plot_budget(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = list(BUDGETS)
    pos = {e: i for i, e in enumerate(xs)}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.6))
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["fault"], r["histograms"], r["severity"]), []).append(r)
    for (fault, hist, sev), rs in sorted(groups.items()):
        rs = sorted(rs, key=lambda r: pos[r["epsilon"]])
        x = [pos[r["epsilon"]] for r in rs]
        if rs[0]["pairs"]:
            style = "-" if hist == "labels" else "--"
            ax1.plot(
                x, [r["recall"] for r in rs], style, marker="o", label=f"{fault} {sev} ({hist})"
            )
        ax2.plot(
            x,
            [r["false_alarms_per_1000"] for r in rs],
            "-" if hist == "labels" else "--",
            marker="s",
            label=f"{fault}{' ' + sev if rs[0]['pairs'] else ''} ({hist})",
        )
    for ax in (ax1, ax2):
        ax.set_xticks(range(len(xs)), [_eps_label(e) for e in xs])
        ax.set_xlabel("telemetry budget epsilon per client (30 rounds, delta 1e-5)")
    ax1.set_ylim(-0.03, 1.03)
    ax1.set_ylabel("recall")
    ax1.set_title("drift detection vs telemetry budget")
    ax1.legend(fontsize=7)
    ax2.set_ylabel("false alarms / 1,000 healthy client-rounds")
    ax2.set_title("false alarms (all finding kinds)")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_section(name: str, text: str, doc: Path = DOC) -> None:
    """Replace the text between ``<!-- privacy:NAME:start -->`` and ``...:end -->`` in docs/privacy.md."""
    start, end = f"<!-- privacy:{name}:start -->", f"<!-- privacy:{name}:end -->"
    body = doc.read_text(encoding="utf-8")
    if start not in body or end not in body:
        raise click.ClickException(f"{doc} has no {start} ... {end} markers")
    head, rest = body.split(start, 1)
    tail = rest.split(end, 1)[1]
    doc.write_text(f"{head}{start}\n{text}{end}{tail}", encoding="utf-8")


def _run(cases: list[Case], jobs: int) -> tuple[list[dict[str, Any]], float]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    started = time.perf_counter()
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
    ) as progress:
        task = progress.add_task("runs", total=len(cases))

        def done(case: Case, res: dict[str, Any]) -> None:
            progress.update(task, advance=1, description=f"{case.run_id} ({res['seconds']:.0f} s)")

        raw = run_grid(cases, jobs=jobs, on_done=done)
    return raw, time.perf_counter() - started


def _dump(path: Path, body: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(json_clean(body), indent=1, allow_nan=False) + "\n", encoding="utf-8"
    )


@click.group()
def cli() -> None:
    """Detection under privacy (see the module docstring)."""


@cli.command()
@click.option("--seeds", default="0,1", show_default=True)
@click.option("--clients", default="8-12", show_default=True)
@click.option("--jobs", default=2, show_default=True, type=int)
@click.option(
    "--from-json",
    is_flag=True,
    help="Re-render the docs section and plot from bench/results/privacy_budget.json, no runs.",
)
def budget(seeds: str, clients: str, jobs: int, from_json: bool) -> None:
    """Drift detection and false alarms at telemetry budgets inf, 10, 3, 1."""
    if from_json:
        saved = json.loads((ROOT / "bench" / "results" / "privacy_budget.json").read_text())
        rows = [
            {**r, "epsilon": math.inf if r["epsilon"] is None else r["epsilon"]}
            for r in saved["summary"]
        ]
        plot_budget(rows, ROOT / "docs" / "privacy_detection.png")
        write_section("budget", render_budget(rows, saved["meta"]))
        click.echo(render_budget(rows, saved["meta"]))
        return
    quiet_logs()
    seed_list = [int(s) for s in seeds.split(",")]
    lo, hi = (int(x) for x in clients.split("-"))
    cases = budget_cases(seed_list, (lo, hi))
    raw, seconds = _run(cases, jobs)
    runs = [result_from_dict(r["result"]) for r in raw]
    rows = summarize_budget(cases, runs)
    meta = {
        "runs": len(cases),
        "grid": f"label drift x 3 severities x 2 histogram sets, covariate shift, healthy x 2 "
        f"histogram sets; budgets inf/10/3/1; {len(seed_list)} seeds; {lo}-{hi} clients, 30 rounds, "
        "onset 8-15, Dirichlet 0.5; digits, logistic regression",
        "seconds": seconds,
        "jobs": jobs,
        "machine": f"{os.cpu_count()}-CPU",
        "command": f"python -m bench.bench_privacy budget --seeds {seeds} --clients {clients} --jobs {jobs}",
    }
    _dump(
        ROOT / "bench" / "results" / "privacy_budget.json",
        {
            "meta": meta,
            "summary": rows,
            "runs": [{**r["result"], "findings": r["findings"]} for r in raw],
        },
    )
    plot_budget(rows, ROOT / "docs" / "privacy_detection.png")
    write_section("budget", render_budget(rows, meta))
    click.echo(render_budget(rows, meta))


def scalar_cases(
    kinds: Sequence[str], seeds: Sequence[int], clients: tuple[int, int]
) -> list[Case]:
    cases = []
    for fault in [*kinds, None]:
        for mode, options in (("sketch", ()), ("scalars", (("secure_aggregation", True),))):
            for seed in seeds:
                cases.append(
                    Case(fault, 0.5, seed, 30, clients, (8, 15), options=options, tag=mode)
                )
    return cases


def render_scalars(
    table: dict[str, dict[str, KindSummary]], kinds: Sequence[str], meta: dict[str, Any]
) -> str:
    lines = [
        f"Grid: {meta['runs']} runs ({meta['grid']}); wall time {meta['seconds']:.0f} s with "
        f"{meta['jobs']} process(es) on a shared {meta['machine']} machine. Generated by "
        f"`{meta['command']}`; every run in `bench/results/privacy_scalars.json`.",
        "",
        "| fault | recall, sketches | recall, client scalars | median delay, sketches | median delay, "
        "scalars | false alarms / 1,000, sketches | false alarms / 1,000, scalars |",
        "|---|---|---|---|---|---|---|",
    ]
    for k in [*kinds, "healthy", "all runs"]:
        a, b = table["sketch"][k], table["scalars"][k]
        lines.append(
            f"| {k} | {_fmt(a.recall)} | {_fmt(b.recall)} | {_fmt(a.median_delay_rounds, 0)} | "
            f"{_fmt(b.median_delay_rounds, 0)} | {_fmt(a.false_alarms_per_1000)} | "
            f"{_fmt(b.false_alarms_per_1000)} |"
        )
    return "\n".join(lines) + "\n"


@cli.command()
@click.option("--seeds", default="0,1", show_default=True)
@click.option("--clients", default="20-50", show_default=True)
@click.option("--jobs", default=2, show_default=True, type=int)
def scalars(seeds: str, clients: str, jobs: int) -> None:
    """Every fault kind with server-side sketches and in the scalar-only (secure aggregation) mode."""
    from simulator.scenario import FAULT_KINDS

    quiet_logs()
    kinds = [k for k in FAULT_KINDS if k in SEVERITY]
    seed_list = [int(s) for s in seeds.split(",")]
    lo, hi = (int(x) for x in clients.split("-"))
    cases = scalar_cases(kinds, seed_list, (lo, hi))
    raw, seconds = _run(cases, jobs)
    runs = [result_from_dict(r["result"]) for r in raw]
    table: dict[str, dict[str, KindSummary]] = {}
    for mode in ("sketch", "scalars"):
        rs = [r for c, r in zip(cases, runs, strict=True) if c.tag == mode]
        table[mode] = {k: summarize([r for r in rs if r.faults == [k]], k) for k in kinds}
        table[mode]["healthy"] = summarize([r for r in rs if r.healthy], "healthy")
        table[mode]["all runs"] = summarize(rs, "all runs")
    meta = {
        "runs": len(cases),
        "grid": f"{len(kinds)} fault kinds + healthy x 2 modes x {len(seed_list)} seeds; {lo}-{hi} "
        "clients, 30 rounds, onset 8-15, Dirichlet 0.5; digits, logistic regression",
        "seconds": seconds,
        "jobs": jobs,
        "machine": f"{os.cpu_count()}-CPU",
        "command": f"python -m bench.bench_privacy scalars --seeds {seeds} --clients {clients} --jobs {jobs}",
    }
    _dump(
        ROOT / "bench" / "results" / "privacy_scalars.json",
        {
            "meta": meta,
            "summary": {m: {k: v.to_dict() for k, v in t.items()} for m, t in table.items()},
            "runs": [
                {**r["result"], "mode": c.tag, "findings": r["findings"]}
                for c, r in zip(cases, raw, strict=True)
            ],
        },
    )
    write_section("scalars", render_scalars(table, kinds, meta))
    click.echo(render_scalars(table, kinds, meta))


if __name__ == "__main__":
    cli()
