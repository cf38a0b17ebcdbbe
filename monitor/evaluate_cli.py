"""``fedsentinel evaluate``: the detection-quality benchmark (issue 4).

Every fault kind of the simulator x Dirichlet alpha x seed, plus healthy runs,
each simulated (batched engine, logistic regression on digits) and sent through
the real service (a :class:`monitor.server.ServerThread` over a fresh SQLite
store, the SDK's :class:`collectors.MonitorClient`); the findings are read back
through the query API and scored by :mod:`monitor.evaluation`. Writes a
markdown report, JSON with every run's metrics and a PNG plot.

The grid (all drawn from the seed, so a run is reproducible):

* ``num_clients`` uniform in ``--clients`` (20..50), onset uniform in
  ``--onset`` (8..15), ``--rounds`` 30, full participation;
* the faulty clients: 2 per run (a cohort of max(3, 10%) for
  ``fairness_regression``), drawn among clients with at least
  :data:`MIN_FAULT_EXAMPLES` training rows;
* severities :data:`SEVERITY`; ``label_drift`` moves each faulty client toward
  the class it holds least of (a drift toward a class it is already made of
  would not be a change).
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np

from monitor.evaluation import (
    FEDERATION_FITTING_KINDS,
    FITTING_KINDS,
    KindSummary,
    PairResult,
    RunResult,
    score_run,
    summarize,
)

SEVERITY: dict[str, float] = {
    "label_drift": 0.5,
    "covariate_shift": 1.0,
    "label_flip": 1.0,
    "noisy_labels": 0.8,
    "stale_update": 0.5,
    "free_rider": 1.0,
    "exploding_update": 0.1,
    "nonfinite_update": 0.01,
    "dropout": 1.0,
    "straggler": 1.0,
    "fairness_regression": 1.0,
}
"""Severity per fault kind (simulator.faults documents each): material, not extreme.

label_drift 0.5: half the rows become one class; covariate_shift 1.0: a quarter
of the features move by 1 sd; label_flip 1.0: every training label y -> C-1-y;
noisy_labels 0.8; stale_update 0.5: re-sends the previous update in half the
rounds; free_rider 1.0: near-zero update; exploding_update 0.1: ~11x update;
nonfinite_update 0.01: 1% of the entries NaN; dropout 1.0: silent from onset;
straggler 1.0: 11x slower; fairness_regression 1.0 over a 10-round ramp.
"""

MIN_FAULT_EXAMPLES = 20
FAULTY_CLIENTS = 2
RESULTS_START = "<!-- evaluate:results:start -->"
RESULTS_END = "<!-- evaluate:results:end -->"


@dataclass(frozen=True)
class Case:
    """One run of the grid: a fault kind (None = healthy), alpha and seed; the rest is drawn from them."""

    fault: str | None
    alpha: float
    seed: int
    rounds: int
    clients: tuple[int, int]
    onset: tuple[int, int]

    @property
    def run_id(self) -> str:
        return f"{self.fault or 'healthy'}-a{self.alpha:g}-s{self.seed}"


def build_cases(
    kinds: Sequence[str],
    alphas: Sequence[float],
    seeds: Sequence[int],
    *,
    rounds: int,
    clients: tuple[int, int],
    onset: tuple[int, int],
    healthy: bool = True,
) -> list[Case]:
    faults: list[str | None] = list(kinds) + ([None] if healthy else [])
    return [Case(f, a, s, rounds, clients, onset) for f in faults for a in alphas for s in seeds]


def make_scenario(case: Case) -> Any:
    """The simulator scenario of a case (faults placed on eligible clients, see the module docstring)."""
    from simulator.scenario import FAULT_KINDS, FaultSpec, Scenario
    from simulator.simulation import build_federation

    kind_index = FAULT_KINDS.index(case.fault) + 1 if case.fault else 0
    rng = np.random.default_rng([case.seed, kind_index, int(round(case.alpha * 1000)), 9100])
    num_clients = int(rng.integers(case.clients[0], case.clients[1] + 1))
    onset = int(rng.integers(case.onset[0], case.onset[1] + 1))
    base = Scenario(
        run_id=case.run_id,
        name=f"evaluate {case.run_id}",
        dataset="digits",
        partition="dirichlet",
        alpha=case.alpha,
        num_clients=num_clients,
        rounds=case.rounds,
        model="logreg",
        seed=case.seed,
        centralized_baseline=False,
        engine="batched",
    )
    if case.fault is None:
        return base
    fed = build_federation(base)
    sizes = np.array([len(y) for y in fed.y_train])
    eligible = np.flatnonzero(sizes >= MIN_FAULT_EXAMPLES)
    if eligible.size == 0:
        eligible = np.arange(num_clients)
    count = (
        max(3, int(math.ceil(0.1 * num_clients)))
        if case.fault == "fairness_regression"
        else FAULTY_CLIENTS
    )
    chosen = sorted(
        int(c) for c in rng.choice(eligible, size=min(count, eligible.size), replace=False)
    )
    severity = SEVERITY[case.fault]
    if case.fault == "label_drift":
        num_classes = fed.dataset.num_classes
        faults = [
            FaultSpec(
                kind="label_drift",
                clients=[c],
                onset_round=onset,
                severity=severity,
                options={
                    "target_class": int(
                        np.argmin(np.bincount(fed.y_train[c], minlength=num_classes))
                    )
                },
            )
            for c in chosen
        ]
    else:
        faults = [FaultSpec(kind=case.fault, clients=chosen, onset_round=onset, severity=severity)]
    return base.model_copy(update={"faults": faults})


class _OpenServiceFilter(logging.Filter):
    """The throw-away loopback service has no API keys on purpose; say so once, not per run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("no API keys configured")


def _quiet_logs() -> None:
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


def run_case(case: Case) -> dict[str, Any]:
    """Simulate one case through a fresh in-process service and score it (a JSON-able dict)."""
    import torch

    from collectors import MonitorClient
    from monitor.server import ServerThread
    from monitor.settings import Settings
    from simulator import run_scenario

    # the service runs in a thread of this process; a second BLAS thread only contends with it
    torch.set_num_threads(1)
    _quiet_logs()
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
                result = run_scenario(scenario, sdk, progress=False)
            findings = _fetch_findings(url, scenario.run_id)
    scored = score_run(
        result.ground_truth,
        findings,
        run_id=scenario.run_id,
        client_ids=[scenario.client_id(k) for k in range(scenario.num_clients)],
        rounds=scenario.rounds,
        alpha=case.alpha,
        seed=case.seed,
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


def _result_from_dict(d: dict[str, Any]) -> RunResult:
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


# ---------------------------------------------------------------------------
# Report


def summaries(runs: Sequence[RunResult], kinds: Sequence[str]) -> dict[str, KindSummary]:
    """One summary per fault kind, one for the healthy runs and one over all runs (false alarms)."""
    out = {k: summarize([r for r in runs if r.faults == [k]], k) for k in kinds}
    out["healthy"] = summarize([r for r in runs if r.healthy], "healthy")
    out["all runs"] = summarize(runs, "all runs")
    return out


def _fmt(x: float, nd: int = 2) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def _delay(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:g}"


def render_markdown(
    sums: dict[str, KindSummary],
    runs: Sequence[RunResult],
    meta: dict[str, Any],
    kinds: Sequence[str],
) -> str:
    """The results section: headline table, recall by alpha, false alarms by kind, federation findings, misses."""
    lines = [
        f"Grid: {meta['runs']} runs ({meta['grid']}); wall time {meta['seconds']:.0f} s "
        f"with {meta['jobs']} process(es) on {meta['machine']}. Generated by `{meta['command']}`.",
        "",
        "| fault | runs | faulty pairs | recall | median delay (rounds) | max delay | false alarms / 1,000 "
        "healthy client-rounds | localisation precision | federation finding (runs) | found as |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for k in [*kinds, "healthy", "all runs"]:
        s = sums[k]
        fed = f"{s.federation_detection_runs}/{s.runs}" if k in FEDERATION_FITTING_KINDS else "-"
        found = ", ".join(f"{kind} {n}" for kind, n in s.detected_by_kind.items()) or "-"
        if k in ("healthy", "all runs"):
            lines.append(
                f"| **{k}** | {s.runs} | {s.pairs or '-'} | {_fmt(s.recall) if s.pairs else '-'} | "
                f"{_delay(s.median_delay_rounds)} | {_delay(s.max_delay_rounds)} | "
                f"{_fmt(s.false_alarms_per_1000)} ({s.false_alarms} in {s.healthy_client_rounds:,}) | "
                f"{_fmt(s.localisation_precision)} | - | {found if s.pairs else '-'} |"
            )
            continue
        lines.append(
            f"| {k} | {s.runs} | {s.pairs} | {_fmt(s.recall)} | {_delay(s.median_delay_rounds)} | "
            f"{_delay(s.max_delay_rounds)} | {_fmt(s.false_alarms_per_1000)} "
            f"({s.false_alarms} in {s.healthy_client_rounds:,}) | {_fmt(s.localisation_precision)} "
            f"({s.flagged_faulty}/{s.flagged}) | {fed} | {found} |"
        )
    alphas = sorted({r.alpha for r in runs if r.alpha is not None})
    lines += [
        "",
        "Recall by Dirichlet alpha (label skew: 0.1 strong, 100 about IID):",
        "",
        "| fault | " + " | ".join(f"alpha {a:g}" for a in alphas) + " |",
        "|---|" + "---|" * len(alphas),
    ]
    for k in kinds:
        s = sums[k]
        lines.append(
            f"| {k} | "
            + " | ".join(_fmt(s.recall_by_alpha.get(f"{a:g}", math.nan)) for a in alphas)
            + " |"
        )
    total = sums["all runs"]
    fa_alpha = {a: summarize([r for r in runs if r.alpha == a], f"alpha {a:g}") for a in alphas}
    lines += [
        "",
        f"False alarms by finding kind, all runs ({total.healthy_client_rounds:,} healthy client-rounds), "
        "per 1,000 healthy client-rounds:",
        "",
        "| finding kind | false alarms | per 1,000 | "
        + " | ".join(f"alpha {a:g}" for a in alphas)
        + " |",
        "|---|---|---|" + "---|" * len(alphas),
    ]
    for kind, n in sorted(total.false_alarms_by_kind.items(), key=lambda kv: -kv[1]):
        per_alpha = " | ".join(
            _fmt(
                1000.0
                * fa_alpha[a].false_alarms_by_kind.get(kind, 0)
                / max(fa_alpha[a].healthy_client_rounds, 1)
            )
            for a in alphas
        )
        lines.append(
            f"| {kind} | {n} | {_fmt(1000.0 * n / max(total.healthy_client_rounds, 1))} | {per_alpha} |"
        )
    if not total.false_alarms_by_kind:
        lines.append("| (none) | 0 | 0.00 |" + " |" * len(alphas))
    healthy_runs = [r for r in runs if r.healthy]
    lines += [
        "",
        f"Federation-level findings in the {len(healthy_runs)} healthy runs (no fault injected):",
        "",
        "| finding kind | runs with it | findings |",
        "|---|---|---|",
    ]
    fed_kinds = sorted({k for r in healthy_runs for k in r.federation_findings})
    for kind in fed_kinds:
        with_it = sum(kind in r.federation_findings for r in healthy_runs)
        n = sum(r.federation_findings.get(kind, 0) for r in healthy_runs)
        lines.append(f"| {kind} | {with_it}/{len(healthy_runs)} | {n} |")
    if not fed_kinds:
        lines.append("| (none) | 0 | 0 |")
    misses = [(r, p) for r in runs for p in r.pairs if not p.detected]
    lines += ["", f"Missed pairs ({len(misses)}):", ""]
    if misses:
        lines += ["| run | client | fault | onset |", "|---|---|---|---|"]
        lines += [
            f"| {r.run_id} | {p.client_id} | {p.fault} | {p.onset_round} |" for r, p in misses[:60]
        ]
        if len(misses) > 60:
            lines.append(f"| ... {len(misses) - 60} more in the JSON | | | |")
    else:
        lines.append("none.")
    return "\n".join(lines) + "\n"


def render_readme_table(sums: dict[str, KindSummary], kinds: Sequence[str]) -> str:
    lines = [
        "| fault | recall | median delay | false alarms / 1,000 healthy client-rounds | localisation precision |",
        "|---|---|---|---|---|",
    ]
    for k in [*kinds, "healthy", "all runs"]:
        s = sums[k]
        lines.append(
            f"| {k} | {_fmt(s.recall) if s.pairs else '-'} | {_delay(s.median_delay_rounds)} | "
            f"{_fmt(s.false_alarms_per_1000)} | {_fmt(s.localisation_precision)} |"
        )
    return "\n".join(lines) + "\n"


DOC_HEADER = """# Detection quality

`fedsentinel evaluate` runs the simulator's fault scenarios through the real
service and scores the findings it opens against the injected ground truth.
Method, definitions and the fault -> finding-kind mapping: see
`monitor/evaluation.py` and `monitor/evaluate_cli.py`.

"""


def write_markdown(path: Path, section: str) -> None:
    """Replace the results section between the markers, or write a fresh page."""
    block = f"{RESULTS_START}\n{section}{RESULTS_END}\n"
    if path.exists():
        text = path.read_text(encoding="utf-8")
        if RESULTS_START in text and RESULTS_END in text:
            head, rest = text.split(RESULTS_START, 1)
            tail = rest.split(RESULTS_END, 1)[1]
            path.write_text(head + block + tail.lstrip("\n"), encoding="utf-8")
            return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(DOC_HEADER + block, encoding="utf-8")


def write_plot(path: Path, sums: dict[str, KindSummary], kinds: Sequence[str]) -> None:
    """Recall by fault kind and alpha (bars), false alarms per 1,000 healthy client-rounds (bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    alphas = sorted({a for k in kinds for a in sums[k].recall_by_alpha}, key=float)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(11, 7), sharex=False)
    x = np.arange(len(kinds))
    width = 0.8 / max(len(alphas), 1)
    for j, a in enumerate(alphas):
        ax1.bar(
            x + (j - (len(alphas) - 1) / 2) * width,
            [sums[k].recall_by_alpha.get(a, np.nan) for k in kinds],
            width,
            label=f"alpha {a}",
        )
    ax1.axhline(0.95, color="k", lw=0.8, ls="--", label="aim 0.95")
    ax1.set_ylim(0, 1.05)
    ax1.set_ylabel("recall")
    ax1.set_xticks(x, kinds, rotation=25, ha="right", fontsize=8)
    ax1.legend(fontsize=8, ncol=4, loc="lower left")
    ax1.set_title("fedsentinel detection quality: recall per injected fault")
    labels = [*kinds, "healthy"]
    ax2.bar(
        np.arange(len(labels)), [sums[k].false_alarms_per_1000 for k in labels], color="tab:red"
    )
    ax2.axhline(5, color="k", lw=0.8, ls="--", label="aim 5")
    ax2.set_ylabel("false alarms / 1,000\nhealthy client-rounds")
    ax2.set_xticks(np.arange(len(labels)), labels, rotation=25, ha="right", fontsize=8)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _print_table(sums: dict[str, KindSummary], kinds: Sequence[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="detection quality")
    for col in ("fault", "runs", "pairs", "recall", "median delay", "FA / 1,000", "precision"):
        table.add_column(col)
    for k in [*kinds, "healthy", "all runs"]:
        s = sums[k]
        table.add_row(
            k,
            str(s.runs),
            str(s.pairs),
            _fmt(s.recall),
            _delay(s.median_delay_rounds),
            f"{_fmt(s.false_alarms_per_1000)} ({s.false_alarms})",
            _fmt(s.localisation_precision),
        )
    Console().print(table)


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
    help="A small grid for CI: every kind, alpha 0.5, seed 0, 20-25 clients, 20 rounds.",
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
    jobs: int,
    out: Path | None,
) -> None:
    """Detection-quality benchmark: inject faults, run them through the real service, score the findings."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from simulator.scenario import FAULT_KINDS

    _quiet_logs()
    graded = [k for k in FAULT_KINDS if k in SEVERITY]  # the kinds this grid places and grades
    kind_list = graded if kinds == "all" else _csv(str, kinds)
    unknown = [k for k in kind_list if k not in graded]
    if unknown:
        raise click.BadParameter(
            f"unknown fault kind(s) {', '.join(unknown)}; valid: {', '.join(graded)}"
        )
    if quick:
        alpha_list, seed_list, client_range, onset_range, rounds = [0.5], [0], (20, 25), (8, 10), 20
    else:
        alpha_list, seed_list = _csv(float, alphas), _csv(int, seeds)
        client_range, onset_range = _range(clients), _range(onset)
    if onset_range[1] > rounds:
        raise click.BadParameter(f"onset {onset_range} is after the last round {rounds}")
    cases = build_cases(
        kind_list,
        alpha_list,
        seed_list,
        rounds=rounds,
        clients=client_range,
        onset=onset_range,
        healthy=healthy,
    )
    console = Console(stderr=True)
    started = time.perf_counter()
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

        raw = run_grid(cases, jobs=jobs, on_done=done)
    seconds = time.perf_counter() - started
    runs = [_result_from_dict(r["result"]) for r in raw]
    sums = summaries(runs, kind_list)
    grid = (
        f"{len(kind_list)} fault kinds x alpha {{{', '.join(f'{a:g}' for a in alpha_list)}}} x "
        f"{len(seed_list)} seed(s){' + healthy runs' if healthy else ''}; {client_range[0]}-{client_range[1]} "
        f"clients, {rounds} rounds, onset {onset_range[0]}-{onset_range[1]}; digits, logistic regression"
    )
    meta = {
        "runs": len(cases),
        "grid": grid,
        "seconds": seconds,
        "jobs": jobs,
        "machine": f"{os.cpu_count()} CPU(s)",
        "command": "fedsentinel evaluate" + (" --quick" if quick else ""),
    }
    _print_table(sums, kind_list)
    md_path = (out / "evaluation.md") if out else Path("docs/evaluation.md")
    json_path = (out / "evaluation.json") if out else Path("bench/results/evaluation.json")
    png_path = (out / "evaluation.png") if out else Path("docs/evaluation.png")
    write_markdown(md_path, render_markdown(sums, runs, meta, kind_list))
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(
        json.dumps(
            _json_clean(
                {
                    "meta": meta,
                    "severity": SEVERITY,
                    "fitting_kinds": {k: sorted(v) for k, v in FITTING_KINDS.items()},
                    "federation_fitting_kinds": {
                        k: sorted(v) for k, v in FEDERATION_FITTING_KINDS.items()
                    },
                    "summary": {k: v.to_dict() for k, v in sums.items()},
                    "readme_table": render_readme_table(sums, kind_list),
                    "runs": [
                        {
                            **r["result"],
                            "seconds": r["seconds"],
                            "final_accuracy": r["final_accuracy"],
                            "findings": r["findings"],
                        }
                        for r in raw
                    ],
                }
            ),
            indent=1,
            allow_nan=False,
        )
        + "\n",
        encoding="utf-8",
    )
    write_plot(png_path, sums, kind_list)
    console.print(f"{len(cases)} runs in {seconds:.0f} s; wrote {md_path}, {json_path}, {png_path}")


def _json_clean(value: Any) -> Any:
    """Strict JSON: NaN/inf become null, numpy scalars plain numbers."""
    if isinstance(value, dict):
        return {str(k): _json_clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
